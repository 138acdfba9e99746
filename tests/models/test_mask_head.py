"""SparsePO learned mask head against a NumPy forward, plus its optimizer routing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignjax.models.mask_head import MaskHead, mask_head_labels, mask_head_optimizer

N, B, L, D = 3, 2, 16, 8


def np_branch(p, h):
    """LN shared over layers -> per-layer ReLU scorer -> ReLU(sum_l c_l s_l), float64."""
    mu = h.mean(-1, keepdims=True)
    var = h.var(-1, keepdims=True)
    normed = (h - mu) / np.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
    s = np.maximum(np.einsum("nbld,nd->nbl", normed, p["layer_w"]) + p["layer_b"][:, None, None], 0.0)
    return np.maximum(np.einsum("nbl,n->bl", s, p["layer_mix"]), 0.0)


def _randomised(params, seed):
    """Non-default parameters, so scale, bias, signs and exact zeros all matter."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: np.asarray(rng.normal(size=x.shape)), params)


@pytest.mark.parametrize("mode", ["common", "independent"])
def test_forward_matches_numpy(mode):
    hidden = np.random.default_rng(0).normal(size=(N, B, L, D))
    head = MaskHead(mode=mode)
    params = head.init(jax.random.key(0), jnp.float32(hidden), deterministic=True)["params"]
    params = _randomised(params, 1)
    m_u, m_d = head.apply({"params": params}, jnp.float32(hidden), deterministic=True)
    want_u = np_branch(params["reward"], hidden)
    want_d = want_u if mode == "common" else np_branch(params["kl"], hidden)
    np.testing.assert_allclose(m_u, want_u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m_d, want_d, rtol=1e-5, atol=1e-5)
    both = np.concatenate([want_u, want_d])
    assert (both == 0).any() and (both > 0).any()  # ReLU sparsity is exercised
    assert ("kl" in params) == (mode == "independent")


def test_initial_masks_are_close_to_one():
    hidden = jnp.float32(np.random.default_rng(2).normal(size=(N, B, L, D)) * 5.0)
    head = MaskHead()
    params = head.init(jax.random.key(3), hidden, deterministic=True)
    m_u, _ = head.apply(params, hidden, deterministic=True)
    np.testing.assert_allclose(m_u, 1.0, atol=0.3)


def test_dropout_zeroes_and_rescales_in_training():
    hidden = jnp.float32(np.random.default_rng(4).normal(size=(1, 64, 64, D)))
    head = MaskHead(dropout_rate=0.5)
    params = head.init(jax.random.key(0), hidden, deterministic=True)
    clean, _ = head.apply(params, hidden, deterministic=True)
    noisy, _ = head.apply(params, hidden, deterministic=False, rngs={"dropout": jax.random.key(1)})
    kept = np.asarray(noisy) != 0
    # Two dropout layers at rate 0.5: a mask value survives both w.p. 1/4, scaled by 4
    # (the single-layer s_l is dropped and rescaled by 2 before the mixer, then m by 2).
    assert 0.2 < kept.mean() < 0.3
    np.testing.assert_allclose(np.asarray(noisy)[kept], 4.0 * np.asarray(clean)[kept], rtol=1e-5)


def test_no_gradient_reaches_the_reference_hidden_states():
    hidden = jnp.float32(np.random.default_rng(5).normal(size=(N, B, L, D)))
    head = MaskHead()
    params = head.init(jax.random.key(0), hidden, deterministic=True)
    grad = jax.grad(lambda h: head.apply(params, h, deterministic=True)[0].sum())(hidden)
    np.testing.assert_array_equal(grad, 0.0)


def test_optimizer_gives_the_mask_head_its_own_weight_decay():
    params = {
        "model": {"w": jnp.full((3,), 2.0)},
        "mask_head": {"reward": {"layer_w": jnp.full((2, 4), 2.0)}},
    }
    labels = mask_head_labels(params)
    assert labels == {"model": {"w": "model"}, "mask_head": {"reward": {"layer_w": "mask_head"}}}
    tx = mask_head_optimizer(optax.sgd(0.1), learning_rate=0.5, weight_decay=0.01)
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # AdamW with zero gradient: the update is pure decoupled decay, -lr * wd * param.
    np.testing.assert_allclose(updates["mask_head"]["reward"]["layer_w"], -0.5 * 0.01 * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(updates["model"]["w"], 0.0)


def test_bad_mode_and_shape_are_reported():
    with pytest.raises(ValueError, match="'common' or 'independent'"):
        MaskHead(mode="shared").init(jax.random.key(0), jnp.zeros((1, 1, 1, 2)))
    with pytest.raises(ValueError, match=r"\[layers, B, L, D\]"):
        MaskHead().init(jax.random.key(0), jnp.zeros((1, 1, 2)))
