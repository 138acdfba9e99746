"""The KV-cache path against the plain forward pass on the whole sequence so far."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.models import decoder, head

PROMPT_LENGTHS = (3, 7)
LP = 8
DECODE_STEPS = 7  # rows reach 14 tokens, well past the test sliding window of 5


@functools.lru_cache(maxsize=None)
def _full_logits(cfg):
    def f(params, tokens, positions, segment_ids):
        return head.logits_BxLxV(params, cfg, decoder.apply(params, cfg, tokens, positions, segment_ids))

    return jax.jit(f)


@functools.lru_cache(maxsize=None)
def _cached_logits(cfg):
    def f(params, tokens, positions, segment_ids, cache):
        hidden, cache = decoder.apply_with_cache(params, cfg, tokens, positions, segment_ids, cache)
        return head.logits_BxLxV(params, cfg, hidden), cache

    return jax.jit(f)


def _left_padded_prompts(cfg, seed):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(PROMPT_LENGTHS), LP), np.int32)
    positions = np.zeros_like(tokens)
    segment_ids = np.zeros_like(tokens)
    for b, n in enumerate(PROMPT_LENGTHS):
        tokens[b, LP - n :] = rng.integers(3, cfg.vocab_size, size=n)
        positions[b, LP - n :] = np.arange(n)
        segment_ids[b, LP - n :] = 1
    return tokens, positions, segment_ids


# mistral: every layer slides; gemma3: mixed sliding/full layers (lax.cond when scanned);
# gemma2: attention softcap. (test_sampler covers the other families and uniform scans.)
@pytest.mark.parametrize("name,scan", [("mistral", False), ("gemma3", True), ("gemma2", False)])
def test_decode_steps_equal_full_forward(tiny_family, name, scan):
    _, _, cfg, params = tiny_family(name, scan)
    tokens, positions, segment_ids = _left_padded_prompts(cfg, seed=len(name))
    b = tokens.shape[0]
    cache = decoder.init_cache(cfg, b, LP + DECODE_STEPS)

    rng = np.random.default_rng(0)
    new_tokens = rng.integers(3, cfg.vocab_size, size=(b, DECODE_STEPS)).astype(np.int32)
    new_positions = positions.max(axis=1, keepdims=True) + 1 + np.arange(DECODE_STEPS)
    # Attention is causal, so one forward over the final sequence gives every step's logits.
    all_tokens = np.concatenate([tokens, new_tokens], axis=1)
    all_positions = np.concatenate([positions, new_positions], axis=1)
    all_segment_ids = np.concatenate([segment_ids, np.ones_like(new_tokens)], axis=1)
    expected = np.asarray(_full_logits(cfg)(params, all_tokens, all_positions, all_segment_ids))

    logits, cache = _cached_logits(cfg)(params, tokens, positions, segment_ids, cache)
    real = segment_ids.astype(bool)
    assert np.abs(expected[:, :LP][real]).max() > 1.0
    np.testing.assert_allclose(np.asarray(logits)[real], expected[:, :LP][real], atol=1e-5, rtol=0)
    for t in range(DECODE_STEPS):
        step_logits, cache = _cached_logits(cfg)(
            params, new_tokens[:, t : t + 1], new_positions[:, t : t + 1], np.ones((b, 1), np.int32), cache
        )
        np.testing.assert_allclose(np.asarray(step_logits)[:, 0], expected[:, LP + t], atol=1e-5, rtol=0)
    assert int(cache.length) == LP + DECODE_STEPS


def test_window_changes_logits_at_these_lengths(tiny_family):
    """Guards the test above: without the window, late decode steps would differ."""
    _, _, cfg, params = tiny_family("mistral")
    tokens, positions, segment_ids = _left_padded_prompts(cfg, seed=1)
    windowless = cfg.replace(sliding_window=None)
    with_window = _full_logits(cfg)(params, tokens, positions, segment_ids)
    without = _full_logits(windowless)(params, tokens, positions, segment_ids)
    assert np.abs(np.asarray(with_window - without)[:, -1]).max() > 1e-2


def test_cache_too_small_is_an_actionable_error(tiny_family):
    _, _, cfg, params = tiny_family("llama2")
    tokens = jnp.ones((2, 6), jnp.int32)
    with pytest.raises(ValueError, match="init_cache"):
        decoder.apply_with_cache(params, cfg, tokens, tokens, tokens, decoder.init_cache(cfg, 2, 4))


def test_cache_rows_split_over_the_batch_axes_and_heads_over_tensor():
    from jax.sharding import AbstractMesh

    from alignjax.core import sharding
    from alignjax.generation import cache_sharding

    mesh = AbstractMesh((2, 2, 1, 2), sharding.MESH_AXES)
    axes = cache_sharding.cache_logical_axes()

    def spec(kv_heads):
        shape = (2, 8, 24, kv_heads, 16)
        return sharding.logical_to_spec(axes.k_NxBxSxKxDh, shape, mesh)

    assert spec(2) == jax.sharding.PartitionSpec(None, ("data", "fsdp"), None, "tensor", None)
    # Heads the tensor axis does not divide stay whole on every chip.
    assert spec(1) == jax.sharding.PartitionSpec(None, ("data", "fsdp"), None, None, None)
    assert sharding.logical_to_spec(axes.positions_BxS, (8, 24), mesh) == jax.sharding.PartitionSpec(
        ("data", "fsdp"), None
    )
