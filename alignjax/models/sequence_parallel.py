"""Attention over rows whose tokens are split across the `sequence` mesh axis.

Every layer but attention treats tokens one at a time, so only attention needs the other
shards' keys and values. Two strategies (`model.sequence_parallel`):

  all_gather  each shard gathers every shard's keys and values, then attends its own
              queries to all of them (MaxText's default): one collective per layer, the
              row's keys and values held whole on every shard.
  ring        keys and values travel round the shards (`ppermute`), one block per step,
              while each shard attends to the block it holds (ring attention): a shard
              never holds more than two blocks; the backward sends gradients round with them.

Inside a shard attention is blockwise (`blockwise.py`), or splash under all_gather with
the splash backend. Rows may arrive in zig-zag order (`sequence_order.py`), which the
blockwise kernel, masking by position, does not need to know and splash, masking by
index, does.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from alignjax.core.sharding import BATCH_AXES, SEQUENCE_AXIS
from alignjax.models import blockwise, splash
from alignjax.models.sequence_order import natural_order, sequence_shards

STRATEGIES = ("all_gather", "ring")


# ---------------------------------------------------------------------------------
# Strategy 1: all-gather keys and values (the gather's transpose reduce-scatters dk, dv).
# ---------------------------------------------------------------------------------


def _gather(x_BxLx):
    return lax.all_gather(x_BxLx, SEQUENCE_AXIS, axis=1, tiled=True)


def _all_gather(q, k, v, q_pos, q_seg, spec):
    return blockwise.attend(q, _gather(k), _gather(v), q_pos, q_seg, _gather(q_pos), _gather(q_seg), spec)


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
    q_tiles = blockwise.query_tiles(q, pos, seg, k.shape[2], spec)

    def step(carry, _):
        running, block = carry
        running = blockwise.attend_keys_sealed(running, q_tiles, *block, spec)
        return (running, _ring_shift(block, shards)), None

    # The last block is not sent on: it has served every shard.
    (running, block), _ = lax.scan(
        step, (blockwise.empty_running(q_tiles[0]), (k, v, pos, seg)), length=shards - 1
    )
    running = blockwise.attend_keys_sealed(running, q_tiles, *block, spec)
    out_tiles, lse_tiles = blockwise.finish(running, q.dtype)
    return blockwise.from_query_tiles(out_tiles, q.dtype), (q, k, v, pos, seg, out_tiles, lse_tiles)


def _ring_bwd(shards, spec, residuals, dout_BxLxHxDh):
    q, k, v, pos, seg, out_tiles, lse_tiles = residuals
    q_tiles = blockwise.query_tiles(q, pos, seg, k.shape[2], spec)
    dout_tiles = blockwise.query_tiles(dout_BxLxHxDh.astype(q.dtype), pos, seg, k.shape[2], spec)[0]
    delta_tiles = blockwise.row_delta(dout_tiles, out_tiles)

    def step(carry, _):
        dq_tiles, block, dk, dv = carry
        dq_tiles, dk_block, dv_block = blockwise.key_grads(
            (q_tiles, dout_tiles, lse_tiles, delta_tiles, dq_tiles), *block, spec
        )
        block, dk, dv = _ring_shift((block, dk + dk_block, dv + dv_block), shards)
        return (dq_tiles, block, dk, dv), None

    zeros = jnp.zeros(k.shape, jnp.float32)
    init = (jnp.zeros(out_tiles.shape, jnp.float32), (k, v, pos, seg), zeros, zeros)
    # After `shards` moves each block, and the gradient gathered along its way, is home.
    (dq_tiles, _, dk, dv), _ = lax.scan(step, init, length=shards)
    return blockwise.from_query_tiles(dq_tiles, q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


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
    t = blockwise.tile_size(local, tile or blockwise.DEFAULT_TILE)
    spec = blockwise.Spec(float(scale), None if softcap is None else float(softcap), window, t, t)
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
