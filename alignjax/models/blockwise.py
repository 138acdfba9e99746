"""Blockwise (flash) attention written in JAX: the kernel inside each sequence shard.

Queries and keys go in tiles, a running max and normaliser merge the tiles, and the
backward (`jax.custom_vjp`) recomputes each tile's probabilities from the saved
log-normaliser, so nothing of size [L, S] exists. Tiles the mask rules out entirely are
skipped. The sequence-parallel strategies (`sequence_parallel.py`) run these tile loops
over the keys of one shard at a time.

Masking is `attention.attention_mask`'s rule (segments, positions, window) applied to
positions, not indices, so any token order gives the same result. Queries in padding
(segment 0) attend to nothing and come out as zeros (the XLA reference averages all
values there); nothing reads them.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# Query and key tile: [tile, tile] float32 logits per head are the largest live temporary.
DEFAULT_TILE = 512


class Spec(NamedTuple):
    """Static settings; hashable, so a `nondiff_argnum` of custom_vjp."""

    scale: float
    softcap: float | None
    window: int | None
    tile_q: int
    tile_k: int


def tile_size(length: int, tile: int) -> int:
    return tile if length % tile == 0 else math.gcd(length, tile)


def _tiles(x_BxLx, t: int):
    """[B, L, ...] -> [L / t, B, t, ...]: tiles on the leading axis, for scan and map."""
    b, l = x_BxLx.shape[:2]
    return jnp.moveaxis(x_BxLx.reshape(b, l // t, t, *x_BxLx.shape[2:]), 1, 0)


def _untile(x_NxBxTx):
    n, b, t = x_NxBxTx.shape[:3]
    return jnp.moveaxis(x_NxBxTx, 0, 1).reshape(b, n * t, *x_NxBxTx.shape[3:])


def _mask(q_pos_BxT, q_seg_BxT, k_pos_BxS, k_seg_BxS, window):
    """[B, T, S]: `attention.attention_mask`'s rule (kept here so models import one way)."""
    same = (q_seg_BxT[:, :, None] == k_seg_BxS[:, None, :]) & (k_seg_BxS[:, None, :] != 0)
    delta = q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]
    mask = same & (delta >= 0)
    if window is not None:
        mask &= delta < window
    return mask


def _capped_logits(q_BxKxGxTxDh, k_BxSxKxDh, spec: Spec):
    raw = jnp.einsum("bkgtd,bskd->bkgts", q_BxKxGxTxDh, k_BxSxKxDh, preferred_element_type=jnp.float32)
    raw = raw * spec.scale
    return raw if spec.softcap is None else jnp.tanh(raw / spec.softcap) * spec.softcap


class _Running(NamedTuple):
    """Online-softmax state of a query tile (or of all tiles, stacked on a leading axis)."""

    out_BxKxGxTxDh: jax.Array  # float32, unnormalised
    max_BxKxGxT: jax.Array
    sum_BxKxGxT: jax.Array


def empty_running(q_NxBxKxGxTxDh) -> _Running:
    shape = q_NxBxKxGxTxDh.shape
    return _Running(
        jnp.zeros(shape, jnp.float32),
        jnp.full(shape[:-1], -jnp.inf, jnp.float32),
        jnp.zeros(shape[:-1], jnp.float32),
    )


def _attend_keys(running: _Running, q_tiles, k_BxSxKxDh, v_BxSxKxDh, k_pos_BxS, k_seg_BxS, spec: Spec):
    """`running` (per query tile) updated with one contiguous block of keys and values."""
    q_NxBxKxGxTxDh, q_pos_NxBxT, q_seg_NxBxT = q_tiles
    kv_tiles = tuple(_tiles(x, spec.tile_k) for x in (k_BxSxKxDh, v_BxSxKxDh, k_pos_BxS, k_seg_BxS))

    def one_query_tile(args):
        q, q_pos, q_seg, state = args

        def one_key_tile(state, kv):
            k, v, k_pos, k_seg = kv
            mask_BxTxS = _mask(q_pos, q_seg, k_pos, k_seg, spec.window)

            def update(state):
                out, run_max, run_sum = state
                logits = jnp.where(mask_BxTxS[:, None, None], _capped_logits(q, k, spec), -jnp.inf)
                new_max = jnp.maximum(run_max, jnp.max(logits, axis=-1))
                safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
                probs = jnp.exp(logits - safe_max[..., None])
                rescale = jnp.exp(run_max - safe_max)
                run_sum = run_sum * rescale + jnp.sum(probs, axis=-1)
                pv = jnp.einsum(
                    "bkgts,bskd->bkgtd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
                )
                return _Running(out * rescale[..., None] + pv, new_max, run_sum)

            return lax.cond(jnp.any(mask_BxTxS), update, lambda s: s, state), None

        state, _ = lax.scan(one_key_tile, _Running(*state), kv_tiles)
        return state

    return _Running(*lax.map(one_query_tile, (q_NxBxKxGxTxDh, q_pos_NxBxT, q_seg_NxBxT, tuple(running))))


# The forward passes below run `_attend_keys` through this. Under a scan (scanned layers),
# JAX's partial evaluation of the step otherwise looks inside a custom VJP's forward and
# stacks every tile-skipping `cond`'s internals as residuals: [query tiles, key tiles]
# worth of logits, the L x S array this module exists to avoid. Behind a checkpoint that
# saves nothing, only the forward's inputs are residuals, and the custom VJP needs none.
attend_keys_sealed = jax.checkpoint(
    _attend_keys, static_argnums=(6,), policy=jax.checkpoint_policies.nothing_saveable
)


def finish(running: _Running, dtype):
    """(output tiles in `dtype`, log-normaliser tiles); rows that attended nothing give 0."""
    seen = running.sum_BxKxGxT > 0
    denom = jnp.where(seen, running.sum_BxKxGxT, 1.0)
    out = (running.out_BxKxGxTxDh / denom[..., None]).astype(dtype)
    lse = jnp.where(seen, running.max_BxKxGxT + jnp.log(denom), 0.0)
    return out, lse


def key_grads(grad_in, k_BxSxKxDh, v_BxSxKxDh, k_pos_BxS, k_seg_BxS, spec: Spec):
    """One contiguous block of keys: (dq tiles added to `grad_in`'s, dk, dv) in float32."""
    q_tiles, dout_tiles, lse_tiles, delta_tiles, dq_tiles = grad_in
    kv_tiles = tuple(_tiles(x, spec.tile_k) for x in (k_BxSxKxDh, v_BxSxKxDh, k_pos_BxS, k_seg_BxS))

    def one_key_tile(dq_tiles, kv):
        k, v, k_pos, k_seg = kv

        def one_query_tile(dkv, per_query):
            q, q_pos, q_seg, dout, lse, delta, dq = per_query
            mask_BxTxS = _mask(q_pos, q_seg, k_pos, k_seg, spec.window)

            def grads(args):
                dk, dv, dq = args
                capped = _capped_logits(q, k, spec)
                probs = jnp.where(mask_BxTxS[:, None, None], jnp.exp(capped - lse[..., None]), 0.0)
                dv = dv + jnp.einsum(
                    "bkgts,bkgtd->bskd", probs.astype(dout.dtype), dout, preferred_element_type=jnp.float32
                )
                dprobs = jnp.einsum("bkgtd,bskd->bkgts", dout, v, preferred_element_type=jnp.float32)
                dlogits = probs * (dprobs - delta[..., None])
                if spec.softcap is not None:
                    dlogits = dlogits * (1.0 - jnp.square(capped / spec.softcap))
                dlogits = (dlogits * spec.scale).astype(q.dtype)
                dq = dq + jnp.einsum("bkgts,bskd->bkgtd", dlogits, k, preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("bkgts,bkgtd->bskd", dlogits, q, preferred_element_type=jnp.float32)
                return dk, dv, dq

            dk, dv, dq = lax.cond(jnp.any(mask_BxTxS), grads, lambda a: a, (*dkv, dq))
            return (dk, dv), dq

        zeros = jnp.zeros(k.shape, jnp.float32)
        (dk, dv), dq_tiles = lax.scan(
            one_query_tile, (zeros, zeros), (*q_tiles, dout_tiles, lse_tiles, delta_tiles, dq_tiles)
        )
        return dq_tiles, (dk, dv)

    dq_tiles, (dk_NxBxTxKxDh, dv_NxBxTxKxDh) = lax.scan(one_key_tile, dq_tiles, kv_tiles)
    return dq_tiles, _untile(dk_NxBxTxKxDh), _untile(dv_NxBxTxKxDh)


def query_tiles(q_BxLxHxDh, q_pos_BxL, q_seg_BxL, kv_heads: int, spec: Spec):
    b, l, h, dh = q_BxLxHxDh.shape
    q_BxKxGxLxDh = q_BxLxHxDh.reshape(b, l, kv_heads, h // kv_heads, dh).transpose(0, 2, 3, 1, 4)
    n = l // spec.tile_q
    q_tiles = q_BxKxGxLxDh.reshape(b, kv_heads, h // kv_heads, n, spec.tile_q, dh).transpose(3, 0, 1, 2, 4, 5)
    return q_tiles, _tiles(q_pos_BxL, spec.tile_q), _tiles(q_seg_BxL, spec.tile_q)


def from_query_tiles(x_NxBxKxGxTxDh, dtype):
    n, b, kv, g, t, dh = x_NxBxKxGxTxDh.shape
    return x_NxBxKxGxTxDh.transpose(1, 0, 4, 2, 3, 5).reshape(b, n * t, kv * g, dh).astype(dtype)


def row_delta(dout_tiles, out_tiles):
    """sum_d dout * out per query: the softmax backward's row term."""
    return jnp.sum(dout_tiles.astype(jnp.float32) * out_tiles.astype(jnp.float32), axis=-1)


def blockwise_attention(
    q_BxLxHxDh,
    k_BxSxKxDh,
    v_BxSxKxDh,
    *,
    q_positions_BxL,
    k_positions_BxS,
    q_segment_ids_BxL,
    k_segment_ids_BxS,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    tile: int | None = None,
):
    """The kernel each shard runs, on whole arrays: [B, L, H, Dh] in the query dtype."""
    t = tile or DEFAULT_TILE
    spec = Spec(
        float(scale),
        None if softcap is None else float(softcap),
        window,
        tile_size(q_BxLxHxDh.shape[1], t),
        tile_size(k_BxSxKxDh.shape[1], t),
    )
    ids = (q_positions_BxL, q_segment_ids_BxL, k_positions_BxS, k_segment_ids_BxS)
    return attend(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, *(jnp.asarray(x, jnp.int32) for x in ids), spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def attend(q, k, v, q_pos, q_seg, k_pos, k_seg, spec):
    """`blockwise_attention` with its settings in `spec` and int32 positions and segment ids."""
    return _attend_fwd(q, k, v, q_pos, q_seg, k_pos, k_seg, spec)[0]


def _attend_fwd(q, k, v, q_pos, q_seg, k_pos, k_seg, spec):
    q_tiles = query_tiles(q, q_pos, q_seg, k.shape[2], spec)
    running = attend_keys_sealed(empty_running(q_tiles[0]), q_tiles, k, v, k_pos, k_seg, spec)
    out_tiles, lse_tiles = finish(running, q.dtype)
    return from_query_tiles(out_tiles, q.dtype), (q, k, v, q_pos, q_seg, k_pos, k_seg, out_tiles, lse_tiles)


def _attend_bwd(spec, residuals, dout_BxLxHxDh):
    q, k, v, q_pos, q_seg, k_pos, k_seg, out_tiles, lse_tiles = residuals
    q_tiles = query_tiles(q, q_pos, q_seg, k.shape[2], spec)
    dout_tiles = query_tiles(dout_BxLxHxDh.astype(q.dtype), q_pos, q_seg, k.shape[2], spec)[0]
    grad_in = (
        q_tiles,
        dout_tiles,
        lse_tiles,
        row_delta(dout_tiles, out_tiles),
        jnp.zeros(out_tiles.shape, jnp.float32),
    )
    dq_tiles, dk, dv = key_grads(grad_in, k, v, k_pos, k_seg, spec)
    return (
        from_query_tiles(dq_tiles, q.dtype),
        dk.astype(k.dtype),
        dv.astype(v.dtype),
        None,
        None,
        None,
        None,
    )


attend.defvjp(_attend_fwd, _attend_bwd)
