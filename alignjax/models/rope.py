"""Rotary position embeddings with the frequency scalings the supported families use.

Frequencies are computed in float32 exactly as the reference implementation does, so
imported checkpoints reproduce its logits; the rotation itself runs in float32 too.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from alignjax.models.config import RopeConfig


def inv_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """[head_dim // 2] float32 inverse frequencies for one layer type."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(rope.theta) ** exponents)).astype(np.float32)
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32)
    if rope.rope_type == "llama3":
        # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, and the band in
        # between interpolated smoothly, so the model extends its context without retraining.
        old_len = rope.original_max_position_embeddings
        low_freq_wavelen = old_len / rope.low_freq_factor
        high_freq_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rotary_tables(positions_BxL: jnp.ndarray, inv_freq_K: np.ndarray):
    """cos and sin tables [B, L, head_dim] for the half-split rotation convention."""
    angles_BxLxK = positions_BxL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_K)
    angles_BxLxDh = jnp.concatenate([angles_BxLxK, angles_BxLxK], axis=-1)
    return jnp.cos(angles_BxLxDh), jnp.sin(angles_BxLxDh)


def apply_rotary(x_BxLxHxDh: jnp.ndarray, cos_BxLxDh: jnp.ndarray, sin_BxLxDh: jnp.ndarray):
    """Rotate query or key heads; computed in float32, returned in the input dtype."""
    x = x_BxLxHxDh.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxLxDh[:, :, None, :] + rotated * sin_BxLxDh[:, :, None, :]
    return out.astype(x_BxLxHxDh.dtype)
