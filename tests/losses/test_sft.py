"""Sequence sums and the SFT token-mean NLL against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.losses.sequence import masked_mean, sequence_logps
from alignjax.losses.sft import sft_loss


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.0, 5.0, size=(4, 9))
    mask = (rng.uniform(size=(4, 9)) > 0.4).astype(np.int32)
    mask[2] = 0  # a row with no response tokens
    logps[mask == 0] = -np.inf  # padding values must not leak
    return logps, mask


def test_sequence_logps_matches_numpy():
    logps, mask = _batch()
    sums, counts = jax.jit(sequence_logps)(jnp.float32(logps), jnp.asarray(mask))
    np.testing.assert_allclose(sums, [logps[b][mask[b] > 0].sum() for b in range(4)], rtol=1e-6)
    np.testing.assert_array_equal(counts, mask.sum(1))
    np.testing.assert_allclose(
        masked_mean(jnp.float32(logps), jnp.asarray(mask)), logps[mask > 0].mean(), rtol=1e-6
    )


def test_sft_is_token_mean_nll_with_gradient():
    logps, mask = _batch(1)
    loss, metrics = sft_loss(jnp.float32(logps), jnp.asarray(mask))
    np.testing.assert_allclose(loss, -logps[mask > 0].mean(), rtol=1e-6)
    assert int(metrics["num_tokens"]) == mask.sum()
    finite = jnp.float32(np.where(mask > 0, logps, -1.0))
    grad = jax.grad(lambda x: sft_loss(x, jnp.asarray(mask))[0])(finite)
    np.testing.assert_allclose(grad, np.where(mask > 0, -1.0 / mask.sum(), 0.0), rtol=1e-6)


def test_sft_with_empty_mask_is_zero_not_nan():
    loss, _ = sft_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    assert float(loss) == 0.0
