"""The KV cache as the paged decode-attention kernel reads it (`decode_attention.py`).

Row b's token at position p lies in slot p, and key/value heads come before slots
([N, B, K, S, Dh], S a multiple of PAGE_SIZE). A reshape then turns the whole stacked cache
into the kernel's pages, `PAGE_SIZE` slots each, with no copy: a page table listing each
(layer, row, head)'s pages in order and each row's length are all the kernel needs, so it
reads exactly the written slots and never a masked one.

Slot = position holds one sequence per row counted from position 0, as the sampler writes
it: slots [0, lengths_B[b]) are row b's tokens, the rest unwritten. Tokens of segment 0
(left padding) are not written, so rows of different prompt lengths need no mask.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from alignjax.models.config import ModelConfig

# Slots per page: a multiple of the TPU's sublane tiles (8 rows of float32, 16 of bfloat16),
# small enough that rounding the cache up to whole pages costs under 64 slots a row.
PAGE_SIZE = 64
# Slots of one memory tile (bfloat16 packs 16 slots of 128 lanes; float32 tiles of 8 divide it).
TILE_SLOTS = 16

_ROWS = "activation_batch"
_KV_HEADS = "activation_kv_heads"


class PagedKVCache(NamedTuple):
    """Keys and values of every layer, slot = position; a pytree, so decode steps are pure."""

    k_NxBxKxSxDh: jax.Array
    v_NxBxKxSxDh: jax.Array
    lengths_B: jax.Array  # int32: written slots per row, the next position of each row


class PagedLayerCache(NamedTuple):
    """What one block needs to write its new keys and values and attend over the cache."""

    k_NxBxKxSxDh: jax.Array
    v_NxBxKxSxDh: jax.Array
    layer: jax.Array | int
    slots_BxL: jax.Array  # where each new token goes; S (out of range) for padding, not written
    lengths_B: jax.Array  # already counting the tokens being written


def logical_axes() -> PagedKVCache:
    """Rows over the batch axes, key/value heads over `tensor`, as the slot-ordered cache."""
    kv = P(None, _ROWS, _KV_HEADS, None, None)
    return PagedKVCache(k_NxBxKxSxDh=kv, v_NxBxKxSxDh=kv, lengths_B=P(_ROWS))


def padded_slots(max_len: int) -> int:
    """`max_len` rounded up to whole pages."""
    return -(-max_len // PAGE_SIZE) * PAGE_SIZE


def init_paged_cache(cfg: ModelConfig, batch_size: int, max_len: int) -> PagedKVCache:
    """An empty cache of at least `max_len` slots per row, in the compute dtype."""
    shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, padded_slots(max_len), cfg.head_dim)
    return PagedKVCache(
        k_NxBxKxSxDh=jnp.zeros(shape, cfg.dtype),
        v_NxBxKxSxDh=jnp.zeros(shape, cfg.dtype),
        lengths_B=jnp.zeros((batch_size,), jnp.int32),
    )


def write_slots(cache: PagedKVCache, positions_BxL, segment_ids_BxL):
    """(slot of each new token [B, L], each row's length once they are written [B]).

    A token goes to the slot of its position; padding goes past the end, where the write
    drops it. Lengths only grow: a row's length is one past its last real token."""
    s = cache.k_NxBxKxSxDh.shape[3]
    real_BxL = segment_ids_BxL != 0
    positions_BxL = positions_BxL.astype(jnp.int32)
    slots_BxL = jnp.where(real_BxL, positions_BxL, s)
    ends_B = jnp.max(jnp.where(real_BxL, positions_BxL + 1, 0), axis=1)
    return slots_BxL, jnp.maximum(cache.lengths_B, ends_B)


def write_layer(cache: PagedLayerCache, k_BxLxKxDh, v_BxLxKxDh):
    """The stacks with this layer's new keys and values scattered to their slots (prefill:
    many tokens a row; a decode step writes with `write_token`)."""
    rows_Bx1 = jnp.arange(cache.slots_BxL.shape[0])[:, None]
    layer = jnp.asarray(cache.layer, jnp.int32)
    dtype = cache.k_NxBxKxSxDh.dtype
    # Advanced indices on either side of the heads' slice: the update is [B, L, K, Dh].
    k_all = cache.k_NxBxKxSxDh.at[layer, rows_Bx1, :, cache.slots_BxL].set(
        k_BxLxKxDh.astype(dtype), mode="drop"
    )
    v_all = cache.v_NxBxKxSxDh.at[layer, rows_Bx1, :, cache.slots_BxL].set(
        v_BxLxKxDh.astype(dtype), mode="drop"
    )
    return k_all, v_all


def write_token(x_NxBxKxSxDh, layer, slots_B, x_BxKxDh):
    """`x_NxBxKxSxDh` with each row's one new token written at its slot of `layer` (S: none).

    Each row rewrites the whole aligned tile holding its slot: a single-slot write is a
    partial tile, for which the TPU compiler would lay the cache out slots-inside-heads and
    copy it back into pages around every kernel call; whole tiles keep the pages' layout, and
    the loop updates the cache in place."""
    _, b, k, s, dh = x_NxBxKxSxDh.shape
    layer = jnp.asarray(layer, jnp.int32)

    def write_row(row, x_all):
        slot = slots_B[row]
        start = jnp.minimum(slot // TILE_SLOTS * TILE_SLOTS, s - TILE_SLOTS)
        corner = (layer, row, 0, start, 0)
        tile_1x1xKxTxDh = jax.lax.dynamic_slice(x_all, corner, (1, 1, k, TILE_SLOTS, dh))
        hit_T = start + jnp.arange(TILE_SLOTS) == slot
        new_1x1xKx1xDh = x_BxKxDh[row].astype(x_all.dtype)[None, None, :, None, :]
        tile_1x1xKxTxDh = jnp.where(hit_T[:, None], new_1x1xKx1xDh, tile_1x1xKxTxDh)
        return jax.lax.dynamic_update_slice(x_all, tile_1x1xKxTxDh, corner)

    return jax.lax.fori_loop(0, b, write_row, x_NxBxKxSxDh)


def slot_mask(lengths_B, s: int):
    """(positions [B, S], segment ids [B, S]) of the slots, for `attention.attention`'s rule:
    slot s holds position s, of segment 1 when written and 0 (never attended) when not."""
    slots_S = jnp.arange(s, dtype=jnp.int32)
    positions_BxS = jnp.broadcast_to(slots_S, (lengths_B.shape[0], s))
    return positions_BxS, (slots_S[None] < lengths_B[:, None]).astype(jnp.int32)
