"""Tokamax's fused linear cross-entropy (`model.logps_kernel`) against the chunked log-probs.

Both kernels score the same DPO-style loss: labels shifted by one with an out-of-vocabulary
id in the last column, prompt and padding tokens masked out of each sequence's sum, chosen
and rejected sums in a sigmoid margin (so the per-token cotangents take both signs and are
zero off the mask). The chunked code is checked against float64 NumPy in test_logps.py.
"""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from alignjax.losses.logps_kernel import label_logps, require_full_distribution, resolve
from alignjax.losses.logps_tokamax import vocab_block
from alignjax.models.config import FULL, ModelConfig
from alignjax.train.methods.common import log_sum_sq_from_hidden, logps_from_hidden

# Two pairs (rows 0-1 chosen, 2-3 rejected); V a multiple of 128 so the TPU kernel tiles it.
B, L, D, V = 4, 12, 128, 384
PROMPT = 3


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.float32(rng.normal(size=(B, L, D)))
    unembed = jnp.float32(rng.normal(size=(D, V)) * 0.2)
    tokens = rng.integers(0, V, size=(B, L))
    lengths = np.array([12, 9, 10, 7])
    mask = (np.arange(L)[None] >= PROMPT) & (np.arange(L)[None] < lengths[:, None])
    # log p(tokens[t + 1]) is scored at column t; the last column has no next token.
    targets = jnp.asarray(np.pad(tokens[:, 1:], ((0, 0), (0, 1)), constant_values=-1))
    return hidden, unembed, targets, jnp.float32(np.pad(mask[:, 1:], ((0, 0), (0, 1))))


def _dpo_loss_and_logps(kernel, hidden, unembed, targets, mask):
    def loss(h, w):
        logps_BxL = label_logps(h, w, targets, kernel=kernel, token_chunk=8, vocab_chunk=128)
        sums_B = jnp.sum(logps_BxL * mask, axis=1)
        margin_P = sums_B[:2] - sums_B[2:]
        return jnp.mean(-jax.nn.log_sigmoid(0.1 * margin_P)), logps_BxL

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(hidden, unembed)


def _assert_same(got, want, rtol):
    (loss, logps), (dh, dw) = got
    (want_loss, want_logps), (want_dh, want_dw) = want
    for g, w in ((loss, want_loss), (logps, want_logps), (dh, want_dh), (dw, want_dw)):
        assert g.dtype == jnp.float32 and g.shape == w.shape
        scale = float(jnp.max(jnp.abs(w)))
        assert scale > 0
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("kernel", ["tokamax", "tokamax_interpret"])
def test_tokamax_matches_chunked_values_and_gradients_in_a_dpo_loss(kernel):
    """tokamax on CPU is Tokamax's XLA implementation; tokamax_interpret runs its TPU kernel
    (1024-row blocks, vocabulary blocks of 384) through the Pallas interpreter."""
    batch = _batch()
    got, want = _dpo_loss_and_logps(kernel, *batch), _dpo_loss_and_logps("chunked", *batch)
    _assert_same(got, want, rtol=1e-5)
    # Masked columns and the out-of-vocabulary last column get no gradient.
    unscored = ~np.asarray(batch[3], bool)
    np.testing.assert_array_equal(np.asarray(got[1][0])[unscored], 0.0)


def test_tokamax_runs_per_shard_under_a_mesh():
    """Under a mesh the kernel runs per shard (shard_map) and W's gradient is summed over the
    token shards: one device here, every mesh axis present."""
    batch = _batch(seed=1)
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1, 1), ("data", "fsdp", "sequence", "tensor"))
    with jax.set_mesh(mesh):
        got = _dpo_loss_and_logps("tokamax", *batch)
    _assert_same(got, _dpo_loss_and_logps("chunked", *batch), rtol=1e-5)


def test_auto_and_chunked_resolve_to_chunked_everywhere():
    for platform in ("cpu", "gpu", "tpu"):
        for kernel in ("auto", "chunked"):
            assert resolve(kernel, final_logit_softcap=30.0, vocab=1000, platform=platform) == "chunked"
    assert resolve("tokamax", final_logit_softcap=None, vocab=128256, platform="tpu") == "mosaic_tpu"
    assert resolve("tokamax", final_logit_softcap=None, vocab=V, platform="cpu") == "xla"
    assert (
        resolve("tokamax_interpret", final_logit_softcap=None, vocab=V, platform="cpu")
        == "mosaic_tpu_interpret"
    )


@pytest.mark.parametrize(
    "kernel,softcap,vocab,platform,says",
    [
        ("tokamax", 30.0, 256000, "tpu", "soft-capping"),
        ("tokamax", None, 1000, "tpu", "1000 has none"),
        ("tokamax", None, 128256, "gpu", "no gpu kernel"),
        ("flash", None, 128256, "tpu", "is not one of"),
    ],
)
def test_explicit_tokamax_it_cannot_serve_is_an_error_naming_the_key(kernel, softcap, vocab, platform, says):
    with pytest.raises(ValueError, match="model.logps_kernel") as err:
        resolve(kernel, final_logit_softcap=softcap, vocab=vocab, platform=platform)
    assert says in str(err.value)


def test_full_distribution_objectives_refuse_tokamax_and_serve_auto():
    for kernel in ("tokamax", "tokamax_interpret"):
        with pytest.raises(ValueError, match=f"model.logps_kernel={kernel}: the token KL"):
            require_full_distribution(kernel, "the token KL (loss.sparsepo.kl)")
    for kernel in ("auto", "chunked"):
        require_full_distribution(kernel, "the token KL (loss.sparsepo.kl)")


def test_unknown_kernel_in_the_model_config_names_the_key():
    shape = dict(vocab_size=V, hidden_size=D, intermediate_size=D, num_layers=1, num_heads=1, num_kv_heads=1)
    cfg = ModelConfig(model_type="llama", head_dim=D, layer_types=(FULL,), **shape)
    assert cfg.logps_kernel == "auto"
    with pytest.raises(ValueError, match="model.logps_kernel='fused' is not one of"):
        cfg.replace(logps_kernel="fused")


def test_vocab_block_divides_the_vocabulary_in_lanes_of_128():
    # Llama 3, Qwen 2.5, Llama 2 / Mistral, Gemma; a partial block would corrupt lse.
    assert [vocab_block(v) for v in (128256, 151936, 32000, 256000)] == [384, 128, 256, 512]
    assert vocab_block(1000) is None


def test_the_models_kernel_scores_the_training_log_probs_and_guards_full_distributions():
    """`model.logps_kernel` reaches the methods' shared head (`logps_from_hidden`); WPO's
    weights, which need whole distributions, refuse an explicit Tokamax kernel."""
    hidden, unembed, _, _ = _batch(seed=2)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, V, size=(B, L)))
    shape = dict(vocab_size=V, hidden_size=D, intermediate_size=D, num_layers=1, num_heads=1, num_kv_heads=1)
    cfg = ModelConfig(model_type="llama", head_dim=D, layer_types=(FULL,), logps_kernel="tokamax", **shape)
    loss = SimpleNamespace(token_chunk=8, vocab_chunk=128)
    params = {"lm_head": unembed}
    got = logps_from_hidden(params, cfg, loss, hidden, tokens)
    want = logps_from_hidden(params, cfg.replace(logps_kernel="chunked"), loss, hidden, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:, 0], 0.0)
    with pytest.raises(ValueError, match="model.logps_kernel=tokamax: WPO's weights"):
        log_sum_sq_from_hidden(params, cfg, loss, hidden)
