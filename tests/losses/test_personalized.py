"""P-DPO loss and per-user accuracy against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignjax.losses.dpo_combined import DPOConfig, dpo_loss
from alignjax.losses.dpo_pair_losses import PairLogps
from alignjax.losses.personalized import PDPOConfig, PersonalizedLogps, pdpo_loss

NUM_USERS = 4


def logsig(x):
    return -np.logaddexp(0.0, -x)


def random_batch(seed, ids=(0, 1, 3, 3, 2, 7, -1, 1)):
    rng = np.random.default_rng(seed)
    b = len(ids)
    ref_w, ref_l = -rng.uniform(5, 40, b), -rng.uniform(5, 40, b)
    return dict(
        ids=np.asarray(ids),
        user_w=ref_w + rng.normal(scale=3, size=b),
        user_l=ref_l + rng.normal(scale=3, size=b),
        gen_w=ref_w + rng.normal(scale=3, size=b),
        gen_l=ref_l + rng.normal(scale=3, size=b),
        ref_w=ref_w,
        ref_l=ref_l,
    )


def to_jax(d, dtype=jnp.float32):
    return PersonalizedLogps(
        jnp.asarray(d["ids"]),
        *(jnp.asarray(d[k], dtype) for k in ("user_w", "user_l", "gen_w", "gen_l", "ref_w", "ref_l")),
    )


def np_pdpo(d, beta, alpha):
    ids = np.where((d["ids"] >= 0) & (d["ids"] < NUM_USERS), d["ids"], 0)
    user_loss = -logsig(beta * ((d["user_w"] - d["ref_w"]) - (d["user_l"] - d["ref_l"])))
    gen_loss = -logsig(beta * ((d["gen_w"] - d["ref_w"]) - (d["gen_l"] - d["ref_l"])))
    personal = ids != 0
    user_term = user_loss[personal].mean() if personal.any() else 0.0
    return alpha * user_term + (1 - alpha) * gen_loss.mean(), ids


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_pdpo_loss_and_per_user_accuracy_match_numpy(alpha):
    d = random_batch(0)
    cfg = PDPOConfig(alpha=alpha)
    loss, metrics = jax.jit(lambda b: pdpo_loss(b, cfg, num_users=NUM_USERS, beta=0.2))(to_jax(d))
    want, ids = np_pdpo(d, 0.2, alpha)
    np.testing.assert_allclose(loss, want, rtol=1e-5)

    correct = (d["user_w"] - d["ref_w"]) > (d["user_l"] - d["ref_l"])
    counts = np.array([np.sum(ids == u) for u in range(NUM_USERS)], np.float64)
    accs = np.array([correct[ids == u].mean() if counts[u] else 0.0 for u in range(NUM_USERS)])
    assert counts[0] == 3  # the generic user plus the unseen ids 7 and -1
    np.testing.assert_allclose(metrics["per_user/counts"], counts)
    np.testing.assert_allclose(metrics["per_user/accuracies"], accs, rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/accuracies"], correct.mean(), rtol=1e-6)
    gen_correct = (d["gen_w"] - d["ref_w"]) > (d["gen_l"] - d["ref_l"])
    np.testing.assert_allclose(metrics["generic/rewards/accuracies"], gen_correct.mean(), rtol=1e-6)


def test_alpha_zero_is_generic_dpo():
    d = random_batch(1)
    loss, _ = pdpo_loss(to_jax(d), PDPOConfig(alpha=0.0), num_users=NUM_USERS, beta=0.1)
    generic = PairLogps(
        *(jnp.float32(d[k]) for k in ("gen_w", "gen_l")),
        jnp.ones(8),
        jnp.ones(8),
        jnp.float32(d["ref_w"]),
        jnp.float32(d["ref_l"]),
    )
    dpo, _, _ = dpo_loss(generic, DPOConfig(beta=0.1))
    np.testing.assert_allclose(loss, dpo, rtol=1e-6)


def test_batch_of_only_generic_users_has_no_personal_term():
    d = random_batch(2, ids=(0, 0, 5))
    loss, metrics = pdpo_loss(to_jax(d), PDPOConfig(alpha=0.5), num_users=NUM_USERS, beta=0.1)
    want, _ = np_pdpo(d, 0.1, 0.5)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert float(metrics["loss/user"]) == 0.0


def test_pdpo_gradients_float64():
    d = random_batch(3)
    cfg = PDPOConfig(alpha=0.5)
    with jax.enable_x64(True):
        base = to_jax(d, jnp.float64)

        def f(user_w, gen_l):
            pairs = base._replace(user_chosen_logps_B=user_w, generic_rejected_logps_B=gen_l)
            return pdpo_loss(pairs, cfg, num_users=NUM_USERS, beta=0.05)[0]

        check_grads(
            jax.jit(f),
            (base.user_chosen_logps_B, base.generic_rejected_logps_B),
            order=1,
            modes=["rev"],
            eps=1e-6,
            atol=1e-7,
            rtol=1e-6,
        )
