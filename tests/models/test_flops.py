"""Model FLOPs (for MFU) against the parameter count of transformers' model and the
compiler's own count of the forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_models import FAMILY_CONFIGS

from alignjax.models import decoder, head
from alignjax.models.families import model_config_from_hf
from alignjax.models.flops import step_flops

SHAPE = dict(hidden_size=256, intermediate_size=1024, vocab_size=512, num_hidden_layers=2)


@pytest.mark.parametrize("tied", [False, True])
def test_matmul_parameters_are_the_linear_layers_of_the_hf_model(tied):
    torch = pytest.importorskip("torch")
    import transformers

    hf = dict(FAMILY_CONFIGS["llama2"], **SHAPE, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model_config_from_hf(hf)
    flops = step_flops(cfg, rows=2, length=16, with_reference=False)
    # Every weight read by a matmul (norm scales aside): the projections and the output layer.
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert flops.matmul_params == linear + norms
    assert flops.dense == 6 * flops.matmul_params * 32


def test_forward_flops_match_the_compiler():
    hf = dict(FAMILY_CONFIGS["llama2"], **SHAPE)
    cfg = model_config_from_hf(hf)
    rows, length = 2, 128
    params = decoder.init_params(cfg, jax.random.key(0))
    tokens = jnp.zeros((rows, length), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(length), (rows, length))
    segments = jnp.ones((rows, length), jnp.int32)

    def forward(p):
        return head.logits_BxLxV(p, cfg, decoder.apply(p, cfg, tokens, positions, segments))

    compiled = jax.jit(forward).lower(params).compile().cost_analysis()
    compiled = compiled[0] if isinstance(compiled, list) else compiled
    ours = step_flops(cfg, rows, length, with_reference=True)
    # The reference forward is one third of the dense policy term; the compiler computes all
    # L x L scores where the causal count keeps half, so its attention is twice ours.
    forward_dense = ours.dense / 4
    forward_attention = ours.attention / 4 * 2
    np.testing.assert_allclose(compiled["flops"], forward_dense + forward_attention, rtol=0.05)
