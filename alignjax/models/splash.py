"""Pallas splash attention (TPU) for grouped-query attention, whole rows or split over the
`sequence` mesh axis.

Splash masks by index, not by position: inside a segment the two agree (positions count
up by one token at a time), so segment ids carry packing and padding and a causal or
local mask by index carries the rest. Rows split over the sequence axis in zig-zag order
(`sequence_order.load_balance_order`) would break that; there the kernel is told the
row position of each of its query slots (splash's `q_sequence`, which its mask function
compares) and the gathered keys are put back in row order, so the index rule holds again.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

# Tiles of the sequence-parallel kernel: splash's default tile, and the host-side mask
# tables it builds at trace time (a few seconds at 32k tokens) stay small.
LONG_BLOCK = 512


def zigzag_positions(length: int, shards: int) -> np.ndarray:
    """[L]: the row position of each slot in zig-zag order (`load_balance_order` of
    0..L-1 in NumPy: the kernel's mask tables are built on the host)."""
    halves = np.arange(length).reshape(2, shards, length // (2 * shards))
    return np.stack([halves[0], halves[1][::-1]], axis=1).reshape(length)


@functools.lru_cache(maxsize=64)
def kernel(l, s, group, window, softcap, interpret, *, shards=1, zigzag=False, block=128):
    """A splash kernel for `group` query heads sharing one key/value head, over a mask of
    [l, s]; with `shards` > 1, split over that many query shards (each shard's part of the
    mask tables goes to that shard: `shard_spec`), query slots in zig-zag order if `zigzag`."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    if window is None:
        one = masks.CausalMask(shape=(l, s))
    else:
        one = masks.LocalMask(shape=(l, s), window_size=(window - 1, 0), offset=0)
    if zigzag:
        # The mask function compares these positions, in the kernel and in the host-side
        # tables of which tiles are empty, full or partial.
        one.q_sequence = zigzag_positions(l, shards).astype(np.int32)
    block_q, block_kv = min(block, l // shards), min(block, s)
    sizes = splash.BlockSizes(
        block_q=block_q,
        block_kv_compute=block_kv,
        block_kv=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    return splash.make_splash_mqa(
        masks.MultiHeadMask([one] * group),
        block_sizes=sizes,
        attn_logits_soft_cap=softcap,
        head_shards=1,
        q_seq_shards=shards,
        interpret=interpret,
    )


def shard_spec(splash_kernel, mesh, axis: str):
    """The kernel's shard_map spec: its mask tables split along queries over `axis`."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, axis))
    return splash_kernel.manual_sharding_spec(sharding)


def check_lengths(l: int, s: int, block: int = 128):
    if l % min(block, l) or s % min(block, s):
        raise ValueError(f"splash attention needs lengths that are multiples of {block}, got {l} and {s}")


def apply(splash_kernel, q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_seg_BxL, k_seg_BxS, scale):
    """Run `splash_kernel` on [B, L, H, Dh] queries: [B, L, H, Dh] in the query dtype."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    b, l, h, dh = q_BxLxHxDh.shape
    kv_heads = k_BxSxKxDh.shape[2]
    group = h // kv_heads
    # Splash applies no scale of its own, and shares one K/V head across a query group (MQA),
    # so grouped-query attention maps onto a vmap over KV heads.
    q_BxKxGxLxDh = (q_BxLxHxDh * scale).reshape(b, l, kv_heads, group, dh).transpose(0, 2, 3, 1, 4)
    k_BxKxSxDh = k_BxSxKxDh.transpose(0, 2, 1, 3)
    v_BxKxSxDh = v_BxSxKxDh.transpose(0, 2, 1, 3)

    def one_example(q_KxGxLxDh, k_KxSxDh, v_KxSxDh, q_seg_L, k_seg_S):
        ids = splash.SegmentIds(q=q_seg_L, kv=k_seg_S)
        return jax.vmap(lambda q, k, v: splash_kernel(q, k, v, segment_ids=ids))(
            q_KxGxLxDh, k_KxSxDh, v_KxSxDh
        )

    out_BxKxGxLxDh = jax.vmap(one_example)(q_BxKxGxLxDh, k_BxKxSxDh, v_BxKxSxDh, q_seg_BxL, k_seg_BxS)
    out_BxLxHxDh = out_BxKxGxLxDh.transpose(0, 3, 1, 2, 4).reshape(b, l, h, dh)
    return out_BxLxHxDh.astype(q_BxLxHxDh.dtype)
