"""Top-k and top-p filters against NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.generation.logit_filters import SamplingConfig, top_k_filter, top_p_filter


def _reference_nucleus(logits_V, p):
    """Indices in the nucleus: most likely first, until the mass before a token reaches p."""
    logits = logits_V.astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    kept, mass = [], 0.0
    for i in order:
        if mass >= p:
            break
        kept.append(i)
        mass += probs[i]
    return set(kept)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7, 0.9, 0.999])
def test_top_p_keeps_the_nucleus(p):
    rng = np.random.default_rng(0)
    # Rows from nearly flat to peaked, so nuclei range from one token to most of the vocab.
    sharpness_Bx1 = rng.uniform(0.5, 4.0, size=(16, 1))
    logits_BxV = (rng.normal(size=(16, 50)) * sharpness_Bx1).astype(np.float32)
    filtered = np.asarray(top_p_filter(jnp.asarray(logits_BxV), p))
    for row, out in zip(logits_BxV, filtered):
        kept = set(np.flatnonzero(np.isfinite(out)))
        assert kept == _reference_nucleus(row, p)
        np.testing.assert_array_equal(out[list(kept)], row[list(kept)])


def test_top_p_keeps_the_top_token_even_when_it_alone_exceeds_p():
    logits = jnp.asarray([[10.0, 0.0, -1.0, 0.5]])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.5)), [[True, False, False, False]])


def test_top_k_keeps_the_k_largest_and_their_ties():
    rng = np.random.default_rng(1)
    logits_BxV = rng.normal(size=(8, 40)).astype(np.float32)
    filtered = np.asarray(top_k_filter(jnp.asarray(logits_BxV), 5))
    for row, out in zip(logits_BxV, filtered):
        assert set(np.flatnonzero(np.isfinite(out))) == set(np.argsort(-row)[:5])
    tied = np.asarray(top_k_filter(jnp.asarray([[3.0, 1.0, 3.0, 2.0, 3.0]]), 2))
    np.testing.assert_array_equal(np.isfinite(tied), [[True, False, True, False, True]])


def test_sampling_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1.0)
    with pytest.raises(TypeError, match="eos_ids"):
        SamplingConfig(eos_ids=[2])
