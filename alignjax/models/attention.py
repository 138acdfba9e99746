"""Causal self-attention behind one function, with interchangeable backends.

Masking is defined once: a query attends to a key when both are in the same non-zero
segment, the key is not later than the query, and (on sliding layers) is fewer than
`window` positions behind it. Segment 0 is padding. That one rule covers left padding,
right padding and packed rows.

Backends:
  xla          einsum reference; runs everywhere and is what the others are tested against.
  dot_product  `jax.nn.dot_product_attention`, JAX's own choice of implementation.
  cudnn        cuDNN's fused flash kernel (NVIDIA GPUs). Segments are described to it by
               per-segment lengths and offsets, never by an [L, S] mask, so padding and
               packed rows cost O(L) memory; `max_segments` bounds segments per row.
  splash       Pallas splash attention (TPU); `interpret=True` runs it anywhere, slowly.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from alignjax.models import sequence_parallel as sp
from alignjax.models import splash
from alignjax.core.sharding import BATCH_AXES


class BackendUnavailableError(ValueError):
    """model.attention_backend names a kernel this machine or model cannot run; a ValueError
    like every config mistake, so the command line reports it in one line."""


def attention_mask(q_positions_BxL, k_positions_BxS, q_segment_ids_BxL, k_segment_ids_BxS, window):
    """[B, L, S] boolean: True where the query may attend to the key."""
    same_segment = q_segment_ids_BxL[:, :, None] == k_segment_ids_BxS[:, None, :]
    not_padding = k_segment_ids_BxS[:, None, :] != 0
    delta_BxLxS = q_positions_BxL[:, :, None] - k_positions_BxS[:, None, :]
    mask = same_segment & not_padding & (delta_BxLxS >= 0)
    if window is not None:
        mask &= delta_BxLxS < window
    return mask


def _xla(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxLxS, scale, softcap):
    b, l, h, dh = q_BxLxHxDh.shape
    kv_heads = k_BxSxKxDh.shape[2]
    q_BxLxKxGxDh = q_BxLxHxDh.reshape(b, l, kv_heads, h // kv_heads, dh)
    logits_BxKxGxLxS = jnp.einsum(
        "blkgd,bskd->bkgls", q_BxLxKxGxDh, k_BxSxKxDh, preferred_element_type=jnp.float32
    )
    logits_BxKxGxLxS = logits_BxKxGxLxS * scale
    if softcap is not None:
        logits_BxKxGxLxS = jnp.tanh(logits_BxKxGxLxS / softcap) * softcap
    # A finite fill keeps fully masked (padding) rows finite instead of NaN.
    big_neg = jnp.finfo(jnp.float32).min
    logits_BxKxGxLxS = jnp.where(mask_BxLxS[:, None, None], logits_BxKxGxLxS, big_neg)
    probs_BxKxGxLxS = jax.nn.softmax(logits_BxKxGxLxS, axis=-1).astype(v_BxSxKxDh.dtype)
    out_BxLxKxGxDh = jnp.einsum("bkgls,bskd->blkgd", probs_BxKxGxLxS, v_BxSxKxDh)
    return out_BxLxKxGxDh.reshape(b, l, h, dh)


def _dot_product(q, k, v, mask_BxLxS, scale, softcap):
    if softcap is not None:
        raise BackendUnavailableError(
            f"attention_backend=dot_product does not support attention logit soft-capping "
            f"(attn_logit_softcapping={softcap}); use 'xla' or 'splash'"
        )
    return jax.nn.dot_product_attention(q, k, v, mask=mask_BxLxS[:, None], scale=scale)


def segment_layout(segment_ids_BxL, max_segments: int):
    """cuDNN's description of each row's segments: (lengths [B, M], starts [B, M + 1]).

    Segment s (1-based) occupies a contiguous run of the row starting at starts[:, s - 1]
    and lengths[:, s - 1] tokens long; absent segments are -1 in both, as cuDNN wants.
    Built by scatter, O(L + M), so no [L, L] array exists at any point."""
    b, l = segment_ids_BxL.shape
    rows_B = jnp.arange(b)[:, None]
    slot_BxL = jnp.where(segment_ids_BxL > 0, segment_ids_BxL - 1, max_segments)  # padding -> dropped
    lengths_BxM = jnp.zeros((b, max_segments), jnp.int32).at[rows_B, slot_BxL].add(1, mode="drop")
    index_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    starts_BxM = jnp.full((b, max_segments), l, jnp.int32).at[rows_B, slot_BxL].min(index_BxL, mode="drop")
    present_BxM = lengths_BxM > 0
    lengths_BxM = jnp.where(present_BxM, lengths_BxM, -1)
    starts_BxM1 = jnp.concatenate(
        [jnp.where(present_BxM, starts_BxM, -1), jnp.full((b, 1), -1, jnp.int32)], axis=1
    )
    return lengths_BxM, starts_BxM1


def _cudnn(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_seg_BxL, k_seg_BxS, scale, softcap, window, max_segments):
    if softcap is not None:
        raise BackendUnavailableError(
            f"attention_backend=cudnn does not support attention logit soft-capping "
            f"(attn_logit_softcapping={softcap}); use 'xla'"
        )
    if platform() != "gpu":
        raise BackendUnavailableError(
            f"attention_backend='cudnn' needs an NVIDIA GPU; this computation targets "
            f"{platform()!r}. Use 'xla' or 'dot_product' here."
        )
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    del k_seg_BxS  # self-attention: keys share the queries' segments
    # Offsets (cuDNN's packed layout) also place a single segment anywhere in its row, so
    # left padding needs no special case; cuDNN reads them only for two or more slots.
    lengths_BxM, starts_BxM1 = segment_layout(q_seg_BxL, max(2, max_segments))
    out_BxLxHxDh = cudnn.dot_product_attention(
        q_BxLxHxDh,
        k_BxSxKxDh,
        v_BxSxKxDh,
        q_seqlen=lengths_BxM,
        kv_seqlen=lengths_BxM,
        q_offsets=starts_BxM1,
        kv_offsets=starts_BxM1,
        scale=scale,
        mask_type=cudnn.MaskType.PADDING_CAUSAL,
        sliding_window_length=window,
    )
    # Padding queries attend to nothing: zero them rather than rely on what the kernel leaves.
    return jnp.where((q_seg_BxL > 0)[:, :, None, None], out_BxLxHxDh, 0).astype(q_BxLxHxDh.dtype)


_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("target_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: str):
    """Trace for `platform` ("tpu", "gpu", "cpu") rather than JAX's default backend: an
    ahead-of-time compile from a CPU host for TPU devices picks the TPU kernels."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def platform() -> str:
    """The platform the computation being traced will run on."""
    return _TARGET_PLATFORM.get() or jax.default_backend()


def _splash(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, segment_ids, scale, softcap, window, interpret):
    check_splash(interpret)
    l, s = q_BxLxHxDh.shape[1], k_BxSxKxDh.shape[1]
    splash.check_lengths(l, s)
    group = q_BxLxHxDh.shape[2] // k_BxSxKxDh.shape[2]
    kernel = splash.kernel(l, s, group, window, softcap, interpret)
    return splash.apply(kernel, q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, *segment_ids, scale)


def check_splash(interpret: bool):
    if not interpret and platform() != "tpu":
        raise BackendUnavailableError(
            f"attention_backend='splash' is a TPU kernel; this computation targets "
            f"{platform()!r}. Use 'xla' here (or splash_interpret for testing)."
        )


def _per_shard(fn, q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_seg_BxL, k_seg_BxS):
    """Run a kernel XLA cannot partition (a Pallas call) once per shard of the mesh in
    context (`jax.set_mesh`): rows split over the batch axes, heads over `tensor` when it
    divides both head counts. Without a mesh in context, on the whole arrays."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_seg_BxL, k_seg_BxS)
    rows = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    t = mesh.shape.get("tensor", 1)
    heads = "tensor" if t > 1 and q_BxLxHxDh.shape[2] % t == 0 and k_BxSxKxDh.shape[2] % t == 0 else None
    seq, seg = P(rows, None, heads, None), P(rows, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(seq, seq, seq, seg, seg), out_specs=seq, check_vma=False)(
        q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_seg_BxL, k_seg_BxS
    )


def attention(
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
    backend: str = "xla",
    max_segments: int = 1,
    sequence_parallel: str | None = None,
    sequence_zigzag: bool = False,
):
    """Grouped-query causal attention; returns [B, L, H, Dh] in the query dtype.

    `max_segments` (cudnn only): the most sequences one row holds, 1 unless rows are packed.
    cuDNN keeps softmax statistics per segment slot, so it is a static bound, not L.

    `sequence_parallel` (all_gather or ring; self-attention only, keys at the queries'
    positions): when the mesh in context splits rows over its `sequence` axis, attention
    runs across the shards that way (`sequence_parallel.py`): splash inside each shard for
    backend splash with all_gather, otherwise the blockwise JAX kernel. `sequence_zigzag`:
    the rows arrive in zig-zag order (which splash, masking by index, must know)."""
    if sequence_parallel is not None and sp.applies(q_BxLxHxDh.shape[1], k_BxSxKxDh.shape[1]):
        splash_interpret = None
        if backend in ("splash", "splash_interpret"):
            splash_interpret = backend == "splash_interpret"
            check_splash(splash_interpret)
        return sp.attention(
            q_BxLxHxDh,
            k_BxSxKxDh,
            v_BxSxKxDh,
            q_positions_BxL,
            q_segment_ids_BxL,
            scale=scale,
            window=window,
            softcap=softcap,
            strategy=sequence_parallel,
            splash_interpret=splash_interpret,
            zigzag=sequence_zigzag,
        )
    if backend == "splash" or backend == "splash_interpret":
        # Splash masks by index, which equals masking by position inside a segment.
        interpret = backend == "splash_interpret"

        def kernel(q, k, v, q_seg, k_seg):
            return _splash(q, k, v, (q_seg, k_seg), scale, softcap, window, interpret=interpret)

        return _per_shard(kernel, q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_segment_ids_BxL, k_segment_ids_BxS)
    if backend == "cudnn":
        if q_BxLxHxDh.shape[1] != k_BxSxKxDh.shape[1]:
            raise ValueError("attention_backend='cudnn' is for self-attention over one row (L == S)")

        def fused(q, k, v, q_seg, k_seg):
            return _cudnn(q, k, v, q_seg, k_seg, scale, softcap, window, max_segments)

        return _per_shard(fused, q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_segment_ids_BxL, k_segment_ids_BxS)
    mask_BxLxS = attention_mask(
        q_positions_BxL, k_positions_BxS, q_segment_ids_BxL, k_segment_ids_BxS, window
    )
    if backend == "xla":
        return _xla(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxLxS, scale, softcap)
    if backend == "dot_product":
        return _dot_product(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxLxS, scale, softcap)
    raise ValueError(f"unknown attention backend {backend!r}")
