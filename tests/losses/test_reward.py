"""The Bradley-Terry reward-model loss and its metrics against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.losses.reward import bradley_terry_loss


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _reference(chosen, rejected, valid, margin, coef):
    """TRL's RewardTrainer.compute_loss over the valid pairs only, in float64."""
    keep = valid > 0
    c, r = chosen[keep].astype(np.float64), rejected[keep].astype(np.float64)
    m = 0.0 if margin is None else margin[keep].astype(np.float64)
    loss = -_np_log_sigmoid(c - r - m).mean()
    if coef is not None:
        loss += coef * np.mean((c + r) ** 2)
    both = np.concatenate([c, r])
    metrics = {
        "accuracy": np.mean(c > r),
        "margin": np.mean(c - r),
        "mean_reward": both.mean(),
        "min_reward": both.min(),
        "max_reward": both.max(),
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
    }
    return loss, metrics


def _pairs(seed):
    rng = np.random.default_rng(seed)
    chosen = rng.normal(0.0, 3.0, 8)
    rejected = rng.normal(0.0, 3.0, 8)
    valid = np.array([1, 1, 1, 0, 1, 1, 0, 1])  # unused slots of a partial batch
    # Extreme values in the unused slots must not reach the loss or the metrics.
    chosen[valid == 0], rejected[valid == 0] = 1e4, -1e4
    margin = rng.uniform(0.0, 2.0, 8)
    margin[valid == 0] = 1e4
    return chosen, rejected, valid, margin


@pytest.mark.parametrize("use_margin", [False, True])
@pytest.mark.parametrize("coef", [None, 0.01, 0.5])
def test_loss_and_metrics_match_float64_numpy(use_margin, coef):
    chosen, rejected, valid, margin = _pairs(0)
    margin = margin if use_margin else None
    loss, metrics = jax.jit(bradley_terry_loss, static_argnames="center_rewards_coefficient")(
        jnp.float32(chosen),
        jnp.float32(rejected),
        jnp.asarray(valid),
        None if margin is None else jnp.float32(margin),
        center_rewards_coefficient=coef,
    )
    want_loss, want_metrics = _reference(chosen, rejected, valid, margin, coef)
    np.testing.assert_allclose(float(loss), want_loss, rtol=2e-6)
    for key, want in want_metrics.items():
        np.testing.assert_allclose(float(metrics[key]), want, rtol=2e-6, atol=1e-6, err_msg=key)


def test_gradient_matches_float64_numpy():
    chosen, rejected, valid, margin = _pairs(1)
    coef = 0.1

    def loss_of(c, r):
        return bradley_terry_loss(c, r, jnp.asarray(valid), jnp.float32(margin), coef)[0]

    grad_c, grad_r = jax.grad(loss_of, argnums=(0, 1))(jnp.float32(chosen), jnp.float32(rejected))
    n = valid.sum()
    sig = 1.0 / (1.0 + np.exp(-(chosen - rejected - margin)))
    center = 2.0 * coef * (chosen + rejected) / n
    want_c = np.where(valid > 0, -(1.0 - sig) / n + center, 0.0)
    want_r = np.where(valid > 0, (1.0 - sig) / n + center, 0.0)
    np.testing.assert_allclose(grad_c, want_c, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(grad_r, want_r, rtol=1e-5, atol=1e-9)


def test_equal_rewards_give_ln2_and_padding_only_gives_zeros():
    zeros = jnp.zeros(4)
    loss, metrics = bradley_terry_loss(zeros, zeros, jnp.ones(4))
    np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-7)
    assert float(metrics["accuracy"]) == 0.0  # ties are not correct (TRL: r_chosen > r_rejected)
    loss, metrics = bradley_terry_loss(zeros + 5.0, zeros, jnp.zeros(4), center_rewards_coefficient=1.0)
    assert float(loss) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values())
