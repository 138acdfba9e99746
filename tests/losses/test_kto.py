"""KTO's loss terms (both loss types) against float64 NumPy written from TRL's KTOTrainer.

Inputs are per-token log-probs with prompt and padding columns (padding holds -inf, which
must not leak) and unused batch slots (NaN everywhere, which must count nowhere), summed
the way the KTO method sums them (`sequence_logps`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.losses.kto import KTOConfig, kl_reference_point, kto_loss
from alignjax.losses.sequence import sequence_logps

E, L, USED = 7, 10, 5  # slots, columns, valid examples (slots USED.. are unused)


def _tokens(rng, shift=0.0):
    """Per-token log-probs [E, L] and their completion mask; padding -inf, unused slots NaN."""
    logps = -rng.uniform(0.1, 3.0, size=(E, L)) + shift
    mask = np.zeros((E, L), np.int32)
    for e in range(E):
        start = rng.integers(1, 4)
        stop = rng.integers(start + 1, L + 1)
        mask[e, start:stop] = 1
        logps[e, stop:] = -np.inf  # right padding
    logps[USED:] = np.nan
    mask[USED:] = 0
    return logps, mask


def _inputs(seed):
    rng = np.random.default_rng(seed)
    policy, mask = _tokens(rng)
    ref = np.where(mask > 0, policy + rng.normal(0, 0.4, size=(E, L)), policy)
    kl_policy, kl_mask = _tokens(rng)
    kl_ref = np.where(kl_mask > 0, kl_policy + rng.normal(-0.05, 0.3, size=(E, L)), kl_policy)
    desirable = np.array([1, 0, 1, 1, 0, 1, 0], np.int32)
    valid = (np.arange(E) < USED).astype(np.int32)
    return policy, ref, mask, kl_policy, kl_ref, kl_mask, desirable, valid


def _sums(logps, mask):
    return np.array([logps[e][mask[e] > 0].sum() if mask[e].any() else 0.0 for e in range(E)])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference(policy_E, ref_E, kl_policy_E, kl_ref_E, desirable, valid, cfg, beta):
    """(loss, metrics) over the valid slots, in float64, following TRL's `_compute_loss`."""
    used = valid > 0
    d, u = used & (desirable > 0), used & (desirable == 0)
    z0 = max((kl_policy_E[used] - kl_ref_E[used]).mean(), 0.0) if cfg.loss_type == "kto" else 0.0
    ratio = policy_E - ref_E
    if cfg.loss_type == "kto":
        chosen_losses = 1 - _sigmoid(beta * (ratio[d] - z0))
        rejected_losses = 1 - _sigmoid(beta * (z0 - ratio[u]))
    else:
        chosen_losses = 1 - _sigmoid(beta * ratio[d])
        rejected_losses = _sigmoid(beta * ratio[u])
    losses = np.concatenate([cfg.desirable_weight * chosen_losses, cfg.undesirable_weight * rejected_losses])
    rewards = beta * ratio
    metrics = {
        "kl": z0,
        "rewards/chosen": rewards[d].mean(),
        "rewards/rejected": rewards[u].mean(),
        "rewards/margins": rewards[d].mean() - rewards[u].mean(),
        "logps/chosen": policy_E[d].mean(),
        "logps/rejected": policy_E[u].mean(),
        "rewards/accuracies": np.mean([a > b for a in rewards[d] for b in rewards[u]]),
    }
    return losses.mean(), metrics


def _jax_terms(inputs, cfg, beta):
    policy, ref, mask, kl_policy, kl_ref, kl_mask, desirable, valid = inputs

    def sums(logps, m):
        return sequence_logps(jnp.asarray(logps), jnp.asarray(m))[0]

    kl = kl_reference_point(sums(kl_policy, kl_mask), sums(kl_ref, kl_mask), jnp.asarray(valid))
    return kto_loss(
        sums(policy, mask), sums(ref, mask), jnp.asarray(desirable), jnp.asarray(valid), kl, cfg, beta
    )


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_metrics_match_numpy_in_float64(loss_type, seed):
    cfg, beta = KTOConfig(loss_type=loss_type, desirable_weight=1.3, undesirable_weight=0.6), 0.7
    inputs = _inputs(seed)
    policy, ref, mask, kl_policy, kl_ref, kl_mask, desirable, valid = inputs
    expected_loss, expected = _reference(
        _sums(policy, mask), _sums(ref, mask), _sums(kl_policy, kl_mask), _sums(kl_ref, kl_mask),
        desirable, valid, cfg, beta,
    )  # fmt: skip
    with jax.enable_x64(True):
        loss, metrics = _jax_terms(inputs, cfg, beta)
        assert loss.dtype == jnp.float64
        np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-12)
        assert set(metrics) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-12, atol=1e-15, err_msg=key)


def test_reference_point_is_clamped_at_zero_and_used_by_kto():
    policy, ref, mask, kl_policy, _, kl_mask, desirable, valid = _inputs(3)
    cfg = KTOConfig()
    above = np.where(kl_mask > 0, kl_policy - 0.3, kl_policy)  # the policy above the reference
    below = np.where(kl_mask > 0, kl_policy + 0.3, kl_policy)
    with jax.enable_x64(True):
        z_pos = kl_reference_point(
            sequence_logps(jnp.asarray(kl_policy), kl_mask)[0],
            sequence_logps(jnp.asarray(above), kl_mask)[0],
            valid,
        )
        z_neg = kl_reference_point(
            sequence_logps(jnp.asarray(kl_policy), kl_mask)[0],
            sequence_logps(jnp.asarray(below), kl_mask)[0],
            valid,
        )
        used = valid > 0
        np.testing.assert_allclose(float(z_pos), 0.3 * kl_mask[used].sum(1).mean(), rtol=1e-12)
        assert float(z_neg) == 0.0
        sums = lambda x, m: sequence_logps(jnp.asarray(x), m)[0]  # noqa: E731
        args = (sums(policy, mask), sums(ref, mask), jnp.asarray(desirable), jnp.asarray(valid))
        with_z, _ = kto_loss(*args, z_pos, cfg, 0.5)
        without_z, _ = kto_loss(*args, jnp.float64(0.0), cfg, 0.5)
        assert abs(float(with_z) - float(without_z)) > 1e-3  # kto reads the reference point
        apo = KTOConfig(loss_type="apo_zero_unpaired")
        assert float(kto_loss(*args, z_pos, apo, 0.5)[0]) == float(
            kto_loss(*args, jnp.float64(0.0), apo, 0.5)[0]
        )


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_gradient_matches_numpy_and_skips_the_reference_point(loss_type):
    cfg, beta = KTOConfig(loss_type=loss_type, desirable_weight=2.0, undesirable_weight=0.5), 0.9
    rng = np.random.default_rng(4)
    policy_E, ref_E = -rng.uniform(5, 20, E), -rng.uniform(5, 20, E)
    kl_policy_E, kl_ref_E = -rng.uniform(5, 20, E), -rng.uniform(5, 20, E)
    kl_ref_E[:USED] = kl_policy_E[:USED] - 0.8  # z0 = 0.8 > 0: the clamp is inactive
    desirable = np.array([1, 0, 1, 1, 0, 1, 0])
    valid = (np.arange(E) < USED).astype(np.int32)

    def loss_of(p_E, kl_p_E):
        z0 = kl_reference_point(kl_p_E, jnp.asarray(kl_ref_E), jnp.asarray(valid))
        return kto_loss(p_E, jnp.asarray(ref_E), jnp.asarray(desirable), jnp.asarray(valid), z0, cfg, beta)[0]

    with jax.enable_x64(True):
        grad_E, kl_grad_E = jax.grad(loss_of, argnums=(0, 1))(jnp.asarray(policy_E), jnp.asarray(kl_policy_E))
    z0 = 0.8 if loss_type == "kto" else 0.0
    x = beta * (policy_E - ref_E - z0)
    s = _sigmoid(x) * (1 - _sigmoid(x))
    # d/dr of w (1 - sigmoid(beta (r - z0))) and of w (1 - sigmoid(beta (z0 - r))) (kto),
    # w sigmoid(beta r) (apo_zero_unpaired): -w beta s and +w beta s, over the USED examples.
    sign = np.where(desirable > 0, -cfg.desirable_weight, cfg.undesirable_weight)
    expected_E = np.where(valid > 0, sign * beta * s / USED, 0.0)
    np.testing.assert_allclose(grad_E, expected_E, rtol=1e-12, atol=1e-15)
    assert np.all(np.asarray(kl_grad_E) == 0.0)  # the reference point is detached


def test_config_names_what_is_wrong():
    with pytest.raises(ValueError, match="loss_type='sigmoid'"):
        KTOConfig(loss_type="sigmoid")
    with pytest.raises(ValueError, match="desirable_weight=-1"):
        KTOConfig(desirable_weight=-1.0)
