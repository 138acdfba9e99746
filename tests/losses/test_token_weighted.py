"""SparsePO / TDPO and MaPO activation masks against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignjax.losses.activation_masks import activation_mask
from alignjax.losses.dpo_combined import DPOConfig, dpo_loss
from alignjax.losses.dpo_pair_losses import PairLogps
from alignjax.losses.sequence import sequence_logps
from alignjax.losses.token_weighted import (
    SparsePOConfig,
    TokenPairLogps,
    TokenWeights,
    shared_weights,
    sparsepo_loss,
)

B, L = 5, 8


def logsig(x):
    return -np.logaddexp(0.0, -x)


def random_inputs(seed):
    rng = np.random.default_rng(seed)
    arrays = {}
    for side in ("chosen", "rejected"):
        lens = rng.integers(1, L + 1, size=B)
        mask = (np.arange(L)[None] < lens[:, None]).astype(np.float64)
        pol = -rng.uniform(0.1, 3.0, size=(B, L))
        ref = pol + rng.normal(scale=0.3, size=(B, L))
        kl = rng.uniform(0.0, 0.5, size=(B, L))
        m_u = np.maximum(rng.normal(0.5, 0.6, size=(B, L)), 0.0)  # some exact zeros
        m_d = rng.uniform(0.0, 2.0, size=(B, L))
        pol[mask == 0] = 7.0  # padding values must not leak into any sum
        kl[mask == 0] = 9.0
        arrays[side] = dict(mask=mask, pol=pol, ref=ref, kl=kl, m_u=m_u, m_d=m_d)
    return arrays


def np_sparsepo(a, beta, lam_u, lam_d, with_kl=True):
    def s(x, side):
        return np.where(a[side]["mask"] > 0, x, 0.0).sum(1)

    c, r = a["chosen"], a["rejected"]
    rew_w = s(c["m_u"] * (c["pol"] - c["ref"]), "chosen")
    rew_l = s(r["m_u"] * (r["pol"] - r["ref"]), "rejected")
    u = rew_w - rew_l
    delta = (s(r["m_d"] * r["kl"], "rejected") - s(c["m_d"] * c["kl"], "chosen")) if with_kl else 0
    l1_u = s(np.abs(c["m_u"]), "chosen") + s(np.abs(r["m_u"]), "rejected")
    l1_d = s(np.abs(c["m_d"]), "chosen") + s(np.abs(r["m_d"]), "rejected")
    loss = np.mean(-logsig(beta * (u - delta)) + lam_u * l1_u + lam_d * l1_d)
    return loss, beta * rew_w, beta * rew_l


def to_jax(a, dtype=jnp.float32, with_kl=True):
    c, r = a["chosen"], a["rejected"]
    tokens = TokenPairLogps(
        *(jnp.asarray(x, dtype) for x in (c["pol"], r["pol"], c["ref"], r["ref"], c["mask"], r["mask"])),
        chosen_kl_BxL=jnp.asarray(c["kl"], dtype) if with_kl else None,
        rejected_kl_BxL=jnp.asarray(r["kl"], dtype) if with_kl else None,
    )
    weights = TokenWeights(*(jnp.asarray(x, dtype) for x in (c["m_u"], r["m_u"], c["m_d"], r["m_d"])))
    return tokens, weights


@pytest.mark.parametrize("with_kl", [True, False])
def test_sparsepo_matches_numpy(with_kl):
    a = random_inputs(0)
    cfg = SparsePOConfig(lam_u=0.01, lam_d=0.003)
    tokens, weights = to_jax(a, with_kl=with_kl)
    loss, metrics = jax.jit(lambda t, w: sparsepo_loss(t, w, cfg, beta=0.2))(tokens, weights)
    want, rw, rl = np_sparsepo(a, 0.2, 0.01, 0.003, with_kl)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/chosen"], rw.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/rejected"], rl.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/accuracies"], (rw > rl).mean(), rtol=1e-6)

    keep = np.concatenate([a["chosen"]["mask"].ravel(), a["rejected"]["mask"].ravel()]) > 0
    m_u = np.concatenate([a["chosen"]["m_u"].ravel(), a["rejected"]["m_u"].ravel()])[keep]
    m_d = np.concatenate([a["chosen"]["m_d"].ravel(), a["rejected"]["m_d"].ravel()])[keep]
    assert (m_u == 0).any()
    np.testing.assert_allclose(metrics["mask_u/sparsity"], (m_u == 0).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["mask_u/mean"], m_u.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["mask_d/sparsity"], (m_d == 0).mean(), atol=1e-7)
    np.testing.assert_allclose(metrics["mask_d/mean"], m_d.mean(), rtol=1e-5)


def test_all_ones_weights_without_kl_is_sigmoid_dpo():
    a = random_inputs(1)
    tokens, _ = to_jax(a, with_kl=False)
    loss, metrics = sparsepo_loss(tokens, None, beta=0.1)
    # Independent path: sum per sequence, then the DPO registry's sigmoid loss.
    lw, nw = sequence_logps(tokens.chosen_logps_BxL, tokens.chosen_mask_BxL)
    ll, nl = sequence_logps(tokens.rejected_logps_BxL, tokens.rejected_mask_BxL)
    rw, _ = sequence_logps(tokens.ref_chosen_logps_BxL, tokens.chosen_mask_BxL)
    rl, _ = sequence_logps(tokens.ref_rejected_logps_BxL, tokens.rejected_mask_BxL)
    dpo, dpo_metrics, _ = dpo_loss(PairLogps(lw, ll, nw, nl, rw, rl), DPOConfig(beta=0.1))
    np.testing.assert_allclose(loss, dpo, rtol=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"):
        np.testing.assert_allclose(metrics[key], dpo_metrics[key], rtol=1e-5, atol=1e-7)
    assert float(metrics["mask_u/sparsity"]) == 0.0 and float(metrics["mask_u/mean"]) == 1.0


def test_tdpo_is_ln2_at_initialisation_with_zero_kl():
    a = random_inputs(2)
    for side in ("chosen", "rejected"):
        a[side]["ref"] = a[side]["pol"].copy()
        a[side]["kl"] = np.zeros((B, L))
    tokens, _ = to_jax(a)
    loss, _ = sparsepo_loss(tokens, None, beta=0.1)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-7)


def test_sparsepo_gradients_into_logps_and_weights_float64():
    a = random_inputs(3)
    cfg = SparsePOConfig(lam_u=0.02, lam_d=0.01)
    with jax.enable_x64(True):
        tokens, weights = to_jax(a, jnp.float64)

        def f(chosen_logps, chosen_kl, m_u_w, m_d_l):
            t = tokens._replace(chosen_logps_BxL=chosen_logps, chosen_kl_BxL=chosen_kl)
            w = weights._replace(reward_chosen_BxL=m_u_w + 0.5, kl_rejected_BxL=m_d_l)
            return sparsepo_loss(t, w, cfg, beta=0.3)[0]

        check_grads(
            jax.jit(f),
            (
                tokens.chosen_logps_BxL,
                tokens.chosen_kl_BxL,
                weights.reward_chosen_BxL,
                weights.kl_rejected_BxL,
            ),
            order=1,
            modes=["rev"],
            eps=1e-6,
            atol=1e-7,
            rtol=1e-6,
        )


def test_shared_weights_use_one_mask_for_reward_and_kl():
    a = random_inputs(4)
    for side in ("chosen", "rejected"):
        a[side]["m_d"] = a[side]["m_u"]
    tokens, weights = to_jax(a)
    loss, _ = sparsepo_loss(
        tokens, shared_weights(weights.reward_chosen_BxL, weights.reward_rejected_BxL), beta=0.1
    )
    np.testing.assert_allclose(loss, np_sparsepo(a, 0.1, 0.0, 0.0)[0], rtol=1e-5)


def np_activation_mask(acts, mask, eps=1e-6):
    """Per kind, layer and sequence, by explicit loops over the response tokens."""
    kinds = []
    for stack in acts.values():
        layers = []
        for layer in stack:
            out = np.zeros(mask.shape)
            for b in range(mask.shape[0]):
                idx = np.flatnonzero(mask[b])
                a = layer[b].mean(-1)[idx]
                z = (a - a.mean()) / (a.std() + eps)
                span = z.max() - z.min()
                out[b, idx] = (z - z.min()) / span if span > eps else 1.0
            layers.append(out)
        kinds.append(np.mean(layers, axis=0))
    return np.mean(kinds, axis=0)


def test_activation_mask_matches_numpy_and_has_no_gradient():
    rng = np.random.default_rng(8)
    mask = np.ones((3, 7))
    mask[0, :2] = 0  # prompt
    mask[1, 5:] = 0  # padding
    mask[2, :6] = 0  # one response token: no ranking -> weight 1
    acts = {
        "mlp_out": rng.normal(size=(2, 3, 7, 4)),
        "attn_q": rng.normal(size=(3, 3, 7, 6)),
        "residual": rng.normal(size=(1, 3, 7, 5)) * 10.0,
    }
    got = jax.jit(activation_mask)({k: jnp.float32(v) for k, v in acts.items()}, jnp.asarray(mask))
    want = np_activation_mask(acts, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(got[2, 6]) == 1.0 and float(jnp.max(got)) <= 1.0 and float(jnp.min(got)) >= 0.0

    grad = jax.jit(jax.grad(lambda x: activation_mask({"mlp_out": x}, jnp.asarray(mask)).sum()))(
        jnp.float32(acts["mlp_out"])
    )
    np.testing.assert_array_equal(grad, 0.0)


def test_activation_mask_rejects_missing_layer_axis():
    with pytest.raises(ValueError, match="leading layer axis"):
        activation_mask({"mlp_out": jnp.zeros((3, 7, 4))}, jnp.ones((3, 7)))
