"""Model FLOPs (for MFU) against the parameter count of transformers' model and the
compiler's own count of the forward."""

import dataclasses

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


# vocab 8, width 4, MLP 8, one layer, 2 query heads and 1 KV head of width 2, untied.
TINY = dict(
    FAMILY_CONFIGS["llama2"],
    vocab_size=8,
    hidden_size=4,
    intermediate_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=2,
    tie_word_embeddings=False,
)


def test_tiny_config_flops_by_hand():
    cfg = model_config_from_hf(TINY)
    flops = step_flops(cfg, rows=3, length=16, with_reference=True)
    # q 4*2*2 + k 4*1*2 + v 4*1*2 + o 2*2*4 + gate, up, down 3 * 4*8 + two norms 2*4 = 152 per
    # layer; final norm 4; lm_head 4*8 = 32; the input table 8*4 = 32 is a lookup.
    assert (flops.params, flops.matmul_params, flops.adapter_params) == (220, 188, 0)
    assert flops.policy_per_token == 6 * 188 == 1128
    assert flops.reference_per_token == 2 * 188 == 376
    # 4 * (16 / 2) * 2 heads * head_dim 2 * 1 layer = 128 per pass: 3 policy + 1 reference.
    assert flops.attention_per_token == 128 * 4 == 512
    assert flops.per_token == 2016
    assert flops.total == 2016 * 3 * 16 == 96768
    no_ref = step_flops(cfg, rows=3, length=16, with_reference=False)
    assert (no_ref.reference_per_token, no_ref.attention_per_token) == (0, 384)


def test_lora_flops_count_the_frozen_base_forward_and_activation_gradient():
    cfg = dataclasses.replace(model_config_from_hf(TINY), lora_rank=2, lora_targets=("q", "v"))
    flops = step_flops(cfg, rows=1, length=16, with_reference=True)
    # q: A 4x2 + B 2x(2x2) = 16; v: A 4x2 + B 2x(1x2) = 12.
    assert flops.adapter_params == 28
    # The base: 2N forward + 2N activation gradient, no weight gradient; adapters 6 N_a.
    assert flops.policy_per_token == 4 * 188 + 6 * 28 == 920
    assert flops.reference_per_token == 2 * 188
    assert flops.attention_per_token == 512  # the gradient still runs through attention
