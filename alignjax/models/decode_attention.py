"""Generation's attention over the KV cache, chosen by target platform (`model.decode_attention`).

  auto              paged on TPU when the model meets the kernel's rules below, xla otherwise
                    (on TPU the reason is logged).
  xla               the einsum of `attention.py` over the slot-ordered cache (`kv_cache.KVCache`):
                    runs everywhere, and is the reference the kernel is tested against.
  paged             JAX's Pallas paged-attention TPU kernel, for the single new token of a
                    decode step, over the cache laid out as pages (`paged_cache.py`).
  paged_interpret   the same kernel through the Pallas TPU interpreter: for tests on CPU.

The kernel's rules (`unsupported`): no sliding-window layers (it attends to a row's whole
length); head_dim a multiple of 128 (its blocks' last dimension); a bfloat16 compute
dtype (it rounds keys and values to bfloat16 whatever they are stored in).

Of the kernels JAX ships, paged_attention reads keys and values as separate
[heads, pages, page, Dh] arrays, which the paged layout gives by a reshape; ragged
paged attention wants them interleaved in one array, a copy of the cache per step. Prefill
(many tokens a row) attends over the same layout through the einsum; it runs once.
"""

from __future__ import annotations

import contextlib
import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from alignjax.core.sharding import logical_to_spec
from alignjax.models import attention, paged_cache
from alignjax.models.config import SLIDING, ModelConfig
from alignjax.models.paged_cache import PAGE_SIZE, PagedLayerCache

log = logging.getLogger(__name__)

PAGED = ("paged", "paged_interpret")
# Pages per step of the kernel's loop over a row: at most 8 (512 slots), a divisor of the row's pages.
MAX_PAGES_PER_BLOCK = 8


def unsupported(cfg: ModelConfig) -> str | None:
    """Why the paged kernel cannot serve `cfg`; None when it can."""
    if cfg.sliding_window is not None and SLIDING in cfg.layer_types:
        return f"the kernel has no sliding window (sliding_window={cfg.sliding_window})"
    if cfg.head_dim % 128:
        return f"the kernel needs head_dim a multiple of 128, not {cfg.head_dim}"
    if cfg.dtype != "bfloat16":
        return f"the kernel rounds keys and values to bfloat16; model.dtype is {cfg.dtype}"
    return None


def backend(cfg: ModelConfig, platform: str | None = None) -> str:
    """The decode attention `cfg` runs on `platform` (default: the one being traced for); an
    explicit paged choice for a model the kernel cannot serve is an error."""
    reason = unsupported(cfg)
    if cfg.decode_attention in PAGED and reason is not None:
        raise attention.BackendUnavailableError(
            f"model.decode_attention={cfg.decode_attention}: {reason}; use 'auto' or 'xla'"
        )
    if cfg.decode_attention != "auto":
        return cfg.decode_attention
    if (platform or attention.platform()) != "tpu" or reason is not None:
        return "xla"
    return "paged"


def for_target(cfg: ModelConfig, platform: str) -> ModelConfig:
    """`cfg` with its decode attention settled for programs compiled for `platform`; an
    explicit choice the platform or model cannot run is an error."""
    reason = unsupported(cfg)
    if cfg.decode_attention == "paged" and platform != "tpu":
        raise attention.BackendUnavailableError(
            f"model.decode_attention='paged' is a TPU kernel; this program targets {platform!r}. "
            "Use 'auto' or 'xla' here (or paged_interpret for testing)."
        )
    if cfg.decode_attention == "auto" and platform == "tpu" and reason is not None:
        log.info("decode attention: xla rather than the paged TPU kernel: %s", reason)
    return cfg.replace(decode_attention=backend(cfg, platform))


def pages_per_block(pages: int) -> int:
    """The largest divisor of a row's pages up to MAX_PAGES_PER_BLOCK (the kernel needs a divisor)."""
    return max(d for d in range(1, min(pages, MAX_PAGES_PER_BLOCK) + 1) if pages % d == 0)


def _paged_kernel(q_BxHxDh, k_NxBxKxSxDh, v_NxBxKxSxDh, layer, lengths_B, softcap, interpret):
    """One new token per row over its first lengths_B slots of `layer`: [B, H, Dh] in float32.

    Each (row, key/value head) is one sequence of the kernel, its query heads that head's
    group, and its pages that head's slots of the layer: consecutive pages of the stacked
    cache, whose reshape into pages is free."""
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    n, b, k, s, dh = k_NxBxKxSxDh.shape
    h = q_BxHxDh.shape[1]
    pages = s // PAGE_SIZE
    first_page_R = (layer * (b * k) + jnp.arange(b * k, dtype=jnp.int32)) * pages
    page_indices_RxP = first_page_R[:, None] + jnp.arange(pages, dtype=jnp.int32)[None]
    k_pages = k_NxBxKxSxDh.reshape(1, n * b * k * pages, PAGE_SIZE, dh)
    v_pages = v_NxBxKxSxDh.reshape(1, n * b * k * pages, PAGE_SIZE, dh)
    mode = pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext()
    with mode:
        out_RxGxDh = paged_attention(
            q_BxHxDh.reshape(b * k, h // k, dh),
            k_pages,
            v_pages,
            jnp.repeat(lengths_B, k),
            page_indices_RxP,
            attn_logits_soft_cap=softcap,
            pages_per_compute_block=pages_per_block(pages),
        )
    return out_RxGxDh.reshape(b, h, dh)


def _per_shard(fn, out_ranks: tuple[int, ...], *args):
    """`fn(*args)` once per shard of the mesh in context, split as the paged cache is (rows
    over the batch axes, key/value heads over `tensor`), so the cache never moves; on the
    whole arrays without a mesh. Arguments and outputs are told apart by rank: caches
    [N, B, K, S, Dh], per-head rows [B, H or K, Dh], per-row [B], and the layer (a scalar)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(*args)
    cache_shape = next(a.shape for a in args if a.ndim == 5)
    cache_spec = logical_to_spec(paged_cache.logical_axes().k_NxBxKxSxDh, cache_shape, mesh)
    rows, heads = cache_spec[1], cache_spec[2]
    spec_of = {5: cache_spec, 3: P(rows, heads, None), 1: P(rows), 0: P()}
    specs = lambda ranks: tuple(spec_of[r] for r in ranks)
    sharded = jax.shard_map(
        fn, mesh=mesh, in_specs=specs(a.ndim for a in args), out_specs=specs(out_ranks), check_vma=False
    )
    return sharded(*args)


def decode_step(
    cache: PagedLayerCache, q_BxHxDh, k_BxKxDh, v_BxKxDh, *, scale, softcap=None, interpret=False
):
    """(attention output [B, H, Dh] in the cache's dtype, the updated (k, v) stacks) of one
    new token a row: its key and value written at the row's slot of `cache.layer`, then the
    kernel over the row's slots [0, cache.lengths_B), once per shard of the mesh in context."""
    # The kernel applies no scale; scaling in float32 keeps the queries' precision.
    q_BxHxDh = q_BxHxDh.astype(jnp.float32) * scale

    def step(q, k_new, v_new, k_all, v_all, layer, slots, lengths):
        k_all = paged_cache.write_token(k_all, layer, slots, k_new)
        v_all = paged_cache.write_token(v_all, layer, slots, v_new)
        return _paged_kernel(q, k_all, v_all, layer, lengths, softcap, interpret), k_all, v_all

    layer = jnp.asarray(cache.layer, jnp.int32)
    args = (
        q_BxHxDh,
        k_BxKxDh,
        v_BxKxDh,
        cache.k_NxBxKxSxDh,
        cache.v_NxBxKxSxDh,
        layer,
        cache.slots_BxL[:, 0],
    )
    out_BxHxDh, k_all, v_all = _per_shard(step, (3, 5, 5), *args, cache.lengths_B)
    return out_BxHxDh.astype(k_all.dtype), (k_all, v_all)


def attend(
    cfg: ModelConfig,
    cache: PagedLayerCache,
    q_BxLxHxDh,
    k_BxLxKxDh,
    v_BxLxKxDh,
    positions_BxL,
    segment_ids_BxL,
):
    """(attention output [B, L, H, Dh], the updated (k, v) stacks) of new tokens over a paged
    cache: the kernel for one token a row, the einsum over the written slots for more."""
    if q_BxLxHxDh.shape[1] == 1:
        out_BxHxDh, kv_stacks = decode_step(
            cache,
            q_BxLxHxDh[:, 0],
            k_BxLxKxDh[:, 0],
            v_BxLxKxDh[:, 0],
            scale=cfg.scale,
            softcap=cfg.attn_logit_softcap,
            interpret=cfg.decode_attention == "paged_interpret",
        )
        return out_BxHxDh[:, None], kv_stacks
    k_all, v_all = paged_cache.write_layer(cache, k_BxLxKxDh, v_BxLxKxDh)
    # [B, K, S, Dh] -> [B, S, K, Dh], the einsum's layout: one copy per layer, in prefill only.
    keys_BxSxKxDh = k_all[cache.layer].transpose(0, 2, 1, 3)
    values_BxSxKxDh = v_all[cache.layer].transpose(0, 2, 1, 3)
    k_positions_BxS, k_segment_ids_BxS = paged_cache.slot_mask(cache.lengths_B, keys_BxSxKxDh.shape[1])
    out_BxLxHxDh = attention.attention(
        q_BxLxHxDh,
        keys_BxSxKxDh,
        values_BxSxKxDh,
        q_positions_BxL=positions_BxL,
        k_positions_BxS=k_positions_BxS,
        q_segment_ids_BxL=segment_ids_BxL,
        k_segment_ids_BxS=k_segment_ids_BxS,
        scale=cfg.scale,
        softcap=cfg.attn_logit_softcap,
    )
    return out_BxLxHxDh, (k_all, v_all)
