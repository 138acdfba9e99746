"""Attention over rows whose tokens are split across the `sequence` mesh axis.

Every layer but attention treats tokens one at a time, so only attention needs the other
shards' keys and values. Two strategies (`model.sequence_parallel`):

  all_gather  each shard gathers every shard's keys and values, then attends its own
              queries to all of them (MaxText's default): one collective per layer, the
              row's keys and values held whole on every shard.
  ring        keys and values travel round the shards (`ppermute`), one block per step,
              while each shard attends to the block it holds (ring attention): a shard
              never holds more than two blocks; the backward sends gradients round with them.

Inside a shard attention is blockwise (flash attention written in JAX, `jax.custom_vjp`):
queries and keys go in tiles, a running max and normaliser merge the tiles, and the
backward recomputes each tile's probabilities from the saved log-normaliser, so nothing of
size [L, S] exists. Tiles the mask rules out entirely are skipped; `load_balance_order`
gives each shard an early and a late chunk of the row (zig-zag), so under the causal mask
every shard skips as much as every other.

Masking is `attention.attention_mask`'s rule (segments, positions, window) applied to
positions, not indices, so any token order gives the same result: the decoder permutes
rows into zig-zag order on entry and back on exit. Queries in padding (segment 0) attend to
nothing and come out as zeros (the XLA reference averages all values there); nothing reads
them.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from alignjax.models import splash
from alignjax.sharding import BATCH_AXES, SEQUENCE_AXIS

STRATEGIES = ("all_gather", "ring")
# Query and key tile: [tile, tile] float32 logits per head are the largest live temporary.
DEFAULT_TILE = 512


def sequence_shards() -> int:
    """How many shards the mesh in context (`jax.set_mesh`) splits a row into; 1 without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or SEQUENCE_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[SEQUENCE_AXIS]


# ---------------------------------------------------------------------------------
# Load balancing: the zig-zag token order.
# ---------------------------------------------------------------------------------


def balances(length: int, shards: int) -> bool:
    """Whether a row of `length` tokens can be cut into the 2 x shards chunks zig-zag needs."""
    return shards > 1 and length % (2 * shards) == 0


def load_balance_order(x_BxLx, shards: int):
    """Rows in zig-zag order: cut into 2N chunks, shard r holds chunks r and 2N-1-r, so under
    a causal mask every shard has the same share of (query, key) pairs to compute."""
    b, l = x_BxLx.shape[:2]
    rest = x_BxLx.shape[2:]
    halves = x_BxLx.reshape(b, 2, shards, l // (2 * shards), *rest)
    pairs = jnp.stack([halves[:, 0], jnp.flip(halves[:, 1], axis=1)], axis=2)
    return pairs.reshape(b, l, *rest)


def natural_order(x_BxLx, shards: int):
    """Undoes `load_balance_order`."""
    b, l = x_BxLx.shape[:2]
    rest = x_BxLx.shape[2:]
    pairs = x_BxLx.reshape(b, shards, 2, l // (2 * shards), *rest)
    halves = jnp.concatenate([pairs[:, :, 0], jnp.flip(pairs[:, :, 1], axis=1)], axis=1)
    return halves.reshape(b, l, *rest)


def balanced_index(length: int, shards: int) -> np.ndarray:
    """[L]: where token t of a row sits in zig-zag order (to move soft-token indices).

    `natural_order` of 0..L-1 in NumPy: a constant table, so it is built the same inside
    jit (where jnp would trace it) as outside."""
    pairs = np.arange(length).reshape(shards, 2, length // (2 * shards))
    return np.concatenate([pairs[:, 0], pairs[::-1, 1]]).reshape(length)


# ---------------------------------------------------------------------------------
# Blockwise attention within a shard.
# ---------------------------------------------------------------------------------


class _Spec(NamedTuple):
    """Static settings; hashable, so a `nondiff_argnum` of custom_vjp."""

    scale: float
    softcap: float | None
    window: int | None
    tile_q: int
    tile_k: int


def _tile(length: int, tile: int) -> int:
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


def _capped_logits(q_BxKxGxTxDh, k_BxSxKxDh, spec: _Spec):
    raw = jnp.einsum("bkgtd,bskd->bkgts", q_BxKxGxTxDh, k_BxSxKxDh, preferred_element_type=jnp.float32)
    raw = raw * spec.scale
    return raw if spec.softcap is None else jnp.tanh(raw / spec.softcap) * spec.softcap


class _Running(NamedTuple):
    """Online-softmax state of a query tile (or of all tiles, stacked on a leading axis)."""

    out_BxKxGxTxDh: jax.Array  # float32, unnormalised
    max_BxKxGxT: jax.Array
    sum_BxKxGxT: jax.Array


def _empty_running(q_NxBxKxGxTxDh) -> _Running:
    shape = q_NxBxKxGxTxDh.shape
    return _Running(
        jnp.zeros(shape, jnp.float32),
        jnp.full(shape[:-1], -jnp.inf, jnp.float32),
        jnp.zeros(shape[:-1], jnp.float32),
    )


def _attend_keys(running: _Running, q_tiles, k_BxSxKxDh, v_BxSxKxDh, k_pos_BxS, k_seg_BxS, spec: _Spec):
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
_attend_keys_sealed = jax.checkpoint(
    _attend_keys, static_argnums=(6,), policy=jax.checkpoint_policies.nothing_saveable
)


def _finish(running: _Running, dtype):
    """(output tiles in `dtype`, log-normaliser tiles); rows that attended nothing give 0."""
    seen = running.sum_BxKxGxT > 0
    denom = jnp.where(seen, running.sum_BxKxGxT, 1.0)
    out = (running.out_BxKxGxTxDh / denom[..., None]).astype(dtype)
    lse = jnp.where(seen, running.max_BxKxGxT + jnp.log(denom), 0.0)
    return out, lse


def _key_grads(grad_in, k_BxSxKxDh, v_BxSxKxDh, k_pos_BxS, k_seg_BxS, spec: _Spec):
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


def _query_tiles(q_BxLxHxDh, q_pos_BxL, q_seg_BxL, kv_heads: int, spec: _Spec):
    b, l, h, dh = q_BxLxHxDh.shape
    q_BxKxGxLxDh = q_BxLxHxDh.reshape(b, l, kv_heads, h // kv_heads, dh).transpose(0, 2, 3, 1, 4)
    n = l // spec.tile_q
    q_tiles = q_BxKxGxLxDh.reshape(b, kv_heads, h // kv_heads, n, spec.tile_q, dh).transpose(3, 0, 1, 2, 4, 5)
    return q_tiles, _tiles(q_pos_BxL, spec.tile_q), _tiles(q_seg_BxL, spec.tile_q)


def _from_query_tiles(x_NxBxKxGxTxDh, dtype):
    n, b, kv, g, t, dh = x_NxBxKxGxTxDh.shape
    return x_NxBxKxGxTxDh.transpose(1, 0, 4, 2, 3, 5).reshape(b, n * t, kv * g, dh).astype(dtype)


def _delta(dout_tiles, out_tiles):
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
    spec = _Spec(
        float(scale),
        None if softcap is None else float(softcap),
        window,
        _tile(q_BxLxHxDh.shape[1], t),
        _tile(k_BxSxKxDh.shape[1], t),
    )
    ids = (q_positions_BxL, q_segment_ids_BxL, k_positions_BxS, k_segment_ids_BxS)
    return _blockwise(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, *(jnp.asarray(x, jnp.int32) for x in ids), spec)


# ---------------------------------------------------------------------------------
# Strategy 1: all-gather keys and values (the gather's transpose reduce-scatters dk, dv).
# ---------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _blockwise(q, k, v, q_pos, q_seg, k_pos, k_seg, spec):
    return _blockwise_fwd(q, k, v, q_pos, q_seg, k_pos, k_seg, spec)[0]


def _blockwise_fwd(q, k, v, q_pos, q_seg, k_pos, k_seg, spec):
    q_tiles = _query_tiles(q, q_pos, q_seg, k.shape[2], spec)
    running = _attend_keys_sealed(_empty_running(q_tiles[0]), q_tiles, k, v, k_pos, k_seg, spec)
    out_tiles, lse_tiles = _finish(running, q.dtype)
    return _from_query_tiles(out_tiles, q.dtype), (q, k, v, q_pos, q_seg, k_pos, k_seg, out_tiles, lse_tiles)


def _blockwise_bwd(spec, residuals, dout_BxLxHxDh):
    q, k, v, q_pos, q_seg, k_pos, k_seg, out_tiles, lse_tiles = residuals
    q_tiles = _query_tiles(q, q_pos, q_seg, k.shape[2], spec)
    dout_tiles = _query_tiles(dout_BxLxHxDh.astype(q.dtype), q_pos, q_seg, k.shape[2], spec)[0]
    grad_in = (
        q_tiles,
        dout_tiles,
        lse_tiles,
        _delta(dout_tiles, out_tiles),
        jnp.zeros(out_tiles.shape, jnp.float32),
    )
    dq_tiles, dk, dv = _key_grads(grad_in, k, v, k_pos, k_seg, spec)
    return (
        _from_query_tiles(dq_tiles, q.dtype),
        dk.astype(k.dtype),
        dv.astype(v.dtype),
        None,
        None,
        None,
        None,
    )


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def _gather(x_BxLx):
    return lax.all_gather(x_BxLx, SEQUENCE_AXIS, axis=1, tiled=True)


def _all_gather(q, k, v, q_pos, q_seg, spec):
    return _blockwise(q, _gather(k), _gather(v), q_pos, q_seg, _gather(q_pos), _gather(q_seg), spec)


def _all_gather_splash(kernel, q, k, v, q_seg, shards, zigzag, scale):
    """The same gather, then splash over the whole row. The gathered keys are in the slots'
    order; in row order the kernel's index-based mask applies (module `splash`)."""
    k_full, v_full, k_seg = _gather(k), _gather(v), _gather(q_seg)
    if zigzag:
        k_full, v_full, k_seg = (natural_order(x, shards) for x in (k_full, v_full, k_seg))
    return splash.apply(kernel, q, k_full, v_full, q_seg, k_seg, scale)


# ---------------------------------------------------------------------------------
# Strategy 2: ring. Keys and values move one shard on per step; so, in the backward, do
# their gradients, which arrive home after a full circle.
# ---------------------------------------------------------------------------------


def _ring_shift(xs, shards: int):
    perm = [(i, (i + 1) % shards) for i in range(shards)]
    return jax.tree.map(lambda x: lax.ppermute(x, SEQUENCE_AXIS, perm), xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _ring(q, k, v, pos, seg, shards, spec):
    return _ring_fwd(q, k, v, pos, seg, shards, spec)[0]


def _ring_fwd(q, k, v, pos, seg, shards, spec):
    q_tiles = _query_tiles(q, pos, seg, k.shape[2], spec)

    def step(carry, _):
        running, block = carry
        running = _attend_keys_sealed(running, q_tiles, *block, spec)
        return (running, _ring_shift(block, shards)), None

    # The last block is not sent on: it has served every shard.
    (running, block), _ = lax.scan(step, (_empty_running(q_tiles[0]), (k, v, pos, seg)), length=shards - 1)
    running = _attend_keys_sealed(running, q_tiles, *block, spec)
    out_tiles, lse_tiles = _finish(running, q.dtype)
    return _from_query_tiles(out_tiles, q.dtype), (q, k, v, pos, seg, out_tiles, lse_tiles)


def _ring_bwd(shards, spec, residuals, dout_BxLxHxDh):
    q, k, v, pos, seg, out_tiles, lse_tiles = residuals
    q_tiles = _query_tiles(q, pos, seg, k.shape[2], spec)
    dout_tiles = _query_tiles(dout_BxLxHxDh.astype(q.dtype), pos, seg, k.shape[2], spec)[0]
    delta_tiles = _delta(dout_tiles, out_tiles)

    def step(carry, _):
        dq_tiles, block, dk, dv = carry
        dq_tiles, dk_block, dv_block = _key_grads(
            (q_tiles, dout_tiles, lse_tiles, delta_tiles, dq_tiles), *block, spec
        )
        block, dk, dv = _ring_shift((block, dk + dk_block, dv + dv_block), shards)
        return (dq_tiles, block, dk, dv), None

    zeros = jnp.zeros(k.shape, jnp.float32)
    init = (jnp.zeros(out_tiles.shape, jnp.float32), (k, v, pos, seg), zeros, zeros)
    # After `shards` moves each block, and the gradient gathered along its way, is home.
    (dq_tiles, _, dk, dv), _ = lax.scan(step, init, length=shards)
    return _from_query_tiles(dq_tiles, q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


# ---------------------------------------------------------------------------------
# The entry point: a shard_map over the mesh in context.
# ---------------------------------------------------------------------------------


def applies(q_length: int, k_length: int) -> bool:
    """Whether self-attention over rows of this length runs sequence-parallel here."""
    n = sequence_shards()
    return n > 1 and q_length == k_length and q_length % n == 0


def attention(
    q_BxLxHxDh,
    k_BxLxKxDh,
    v_BxLxKxDh,
    positions_BxL,
    segment_ids_BxL,
    *,
    scale: float,
    window: int | None,
    softcap: float | None,
    strategy: str,
    tile: int | None = None,
    splash_interpret: bool | None = None,
    zigzag: bool = False,
):
    """Grouped-query self-attention of rows split over the `sequence` axis of the mesh in
    context; [B, L, H, Dh] in the query dtype. Call when `applies(L, L)`.

    Inside each shard the blockwise kernel above runs, or, for `all_gather` with
    `splash_interpret` set (False: the TPU kernel, True: through the Pallas interpreter),
    splash; splash masks by index, so it must know whether rows arrive in zig-zag order
    (`zigzag`). Ring steps always run the blockwise kernel: its tiles mask by position,
    whichever shard a block came from."""
    if strategy not in STRATEGIES:
        raise ValueError(f"model.sequence_parallel={strategy!r} is not one of {STRATEGIES}")
    mesh = jax.sharding.get_abstract_mesh()
    shards = mesh.shape[SEQUENCE_AXIS]
    local = q_BxLxHxDh.shape[1] // shards
    t = _tile(local, tile or DEFAULT_TILE)
    spec = _Spec(float(scale), None if softcap is None else float(softcap), window, t, t)
    rows = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    b = q_BxLxHxDh.shape[0]
    if b % math.prod(mesh.shape[a] for a in rows):
        rows = ()
    tensor = mesh.shape.get("tensor", 1)
    heads = (
        "tensor"
        if tensor > 1 and q_BxLxHxDh.shape[2] % tensor == 0 and k_BxLxKxDh.shape[2] % tensor == 0
        else None
    )
    seq, ids = P(rows, SEQUENCE_AXIS, heads, None), P(rows, SEQUENCE_AXIS)
    if strategy == "all_gather" and splash_interpret is not None:
        length, group = q_BxLxHxDh.shape[1], q_BxLxHxDh.shape[2] // k_BxLxKxDh.shape[2]
        block = splash.LONG_BLOCK
        if local % 128 or local % min(block, local):
            # Splash's backward computes the mask in tiles of at least 128 queries.
            raise ValueError(
                f"model.attention_backend=splash under mesh.sequence={shards} needs each shard's "
                f"share of a row to be a multiple of 128 tokens (and of {block} above {block}); "
                f"rows of {length} give {local}: choose data.buckets / data.max_length to suit"
            )
        kernel = splash.kernel(
            length,
            length,
            group,
            window,
            softcap,
            splash_interpret,
            shards=shards,
            zigzag=zigzag,
            block=block,
        )
        fn = lambda kern, q, k, v, seg: _all_gather_splash(kern, q, k, v, seg, shards, zigzag, float(scale))
        return jax.shard_map(
            fn,
            mesh=mesh,
            in_specs=(splash.shard_spec(kernel, mesh, SEQUENCE_AXIS), seq, seq, seq, ids),
            out_specs=seq,
            check_vma=False,
        )(kernel, q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL.astype(jnp.int32))
    if strategy == "ring":
        fn = lambda q, k, v, pos, seg: _ring(q, k, v, pos, seg, shards, spec)
    else:
        fn = lambda q, k, v, pos, seg: _all_gather(q, k, v, pos, seg, spec)
    return jax.shard_map(fn, mesh=mesh, in_specs=(seq, seq, seq, ids, ids), out_specs=seq, check_vma=False)(
        q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, positions_BxL.astype(jnp.int32), segment_ids_BxL.astype(jnp.int32)
    )
