"""How the sampler's KV cache lies on the mesh: rows over the batch axes, key/value heads
over `tensor`, layers, slots and head dimensions whole on every chip, in either layout
(slot-ordered `KVCache`, or `PagedKVCache` for the paged decode kernel).

The cache is an activation of the sampling program, so it carries the activation names
of the rules table in `alignjax/core/sharding.py`: a mesh that splits the training step's
rows and heads splits the cache the same way. Slots stay whole because each decode step
writes one slot at a position only known at run time.
"""

from __future__ import annotations

from jax.sharding import PartitionSpec as P

from alignjax.core.sharding import constrain
from alignjax.models import decoder, paged_cache

_ROWS = "activation_batch"
_KV_HEADS = "activation_kv_heads"


def cache_logical_axes(layout: type = decoder.KVCache) -> decoder.KVCache | decoder.PagedKVCache:
    """The fields of a cache of `layout` (KVCache or PagedKVCache) as logical PartitionSpecs."""
    if layout is decoder.PagedKVCache:
        return paged_cache.logical_axes()
    return decoder.KVCache(
        k_NxBxSxKxDh=P(None, _ROWS, None, _KV_HEADS, None),
        v_NxBxSxKxDh=P(None, _ROWS, None, _KV_HEADS, None),
        positions_BxS=P(_ROWS, None),
        segment_ids_BxS=P(_ROWS, None),
        length=P(),
    )


def rows_axes(ndim: int) -> P:
    """A per-row array: rows over the batch axes, every other dimension whole."""
    return P(_ROWS, *([None] * (ndim - 1)))


def constrain_cache(cache: decoder.KVCache | decoder.PagedKVCache) -> decoder.KVCache | decoder.PagedKVCache:
    """`cache` pinned to its layout on the mesh in context (as it is, without one)."""
    axes = cache_logical_axes(type(cache))
    return type(cache)(*(constrain(x, *spec) for x, spec in zip(cache, axes)))
