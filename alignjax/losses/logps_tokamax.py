"""Per-token log-probs of the labels through Tokamax's fused linear + softmax cross-entropy.

Tokamax (openxla/tokamax) computes `hidden @ W`, its log-normaliser and both gradients tile
by tile in a Pallas Mosaic TPU kernel, never holding a logits tile outside the core's VMEM.
Its op returns the loss summed over tokens and takes one scalar cotangent (tokamax 0.0.12,
the last release for Python 3.11); the objectives here need each token's log-prob and give
each token its own cotangent (a DPO pair's chosen tokens one sign, its rejected tokens the
other). So this module calls Tokamax's forward and backward kernels under its own
custom_vjp:

  forward   the kernel's per-token log-normaliser lse_n, and
            log p_n = h_n . W[:, y_n] - lse_n (the label's logit: a gather and a float32 dot).
  backward  the kernel's backward rebuilds softmax as exp(h_n W - lse_n) from the lse it is
            given: given lse_n - log c_n it yields c_n p_n (c_n >= 0), and labels outside the
            vocabulary drop its one-hot term. One call with the cotangents' positive parts
            and one with their negative parts give sum_n g_n p_n, through W^T for the hidden
            states and h^T for W; the label's term, g_n W[:, y_n] and g_n h_n added into
            column y_n, is a gather and a scatter.

The kernel's rules (0.0.12): rows in blocks of 1024 (padded here; padding rows get zero
cotangent), hidden in blocks of 512 (a partial last block is masked), and vocabulary blocks
that divide the vocabulary: the padded columns of a partial last block would enter its
log-normaliser as logits of 0. `vocab_block` is the largest multiple of 128 up to 512 that
divides V (Llama 3's 128,256: 384); a vocabulary with none is refused (`logps_kernel.py`).

`xla` runs Tokamax's XLA implementation of the same two kernels, which holds [tokens, V]
logits: it exists to check this module on CPU, not to save memory.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from alignjax.core.sharding import BATCH_AXES, SEQUENCE_AXIS

IMPLEMENTATIONS = ("mosaic_tpu", "mosaic_tpu_interpret", "xla")
ROW_BLOCK = 1024
HIDDEN_BLOCK = 512
MAX_VOCAB_BLOCK = 512
LANES = 128


def vocab_block(vocab: int) -> int | None:
    """The largest multiple of 128, up to 512, dividing `vocab`; None when there is none."""
    return next((b for b in range(MAX_VOCAB_BLOCK, 0, -LANES) if vocab % b == 0), None)


class _Plan(NamedTuple):
    """Static choices: hashable, so it can be a `nondiff_argnum` of custom_vjp."""

    implementation: str
    vocab_block: int


def _kernels(plan: _Plan):
    """Tokamax's (forward, backward) for `plan`: fwd(h, y, W) -> (loss, lse) and
    bwd(dout, lse, h, y, W) -> (dh, dW), the loss summed over rows."""
    from tokamax._src.ops.linear_softmax_cross_entropy_loss import pallas_mosaic_tpu_kernel as mosaic
    from tokamax._src.ops.linear_softmax_cross_entropy_loss import reference

    if plan.implementation == "xla":
        return (
            functools.partial(reference.linear_softmax_cross_entropy_loss_fwd_reference, reduction="sum"),
            functools.partial(reference.linear_softmax_cross_entropy_loss_bwd_reference, reduction="sum"),
        )
    blocks = dict(
        b_block_size=ROW_BLOCK, h_block_size=HIDDEN_BLOCK, v_block_size=plan.vocab_block, reduction="sum"
    )
    return (
        functools.partial(mosaic.linear_softmax_cross_entropy_loss_fwd_pallas_mosaic_tpu, **blocks),
        functools.partial(mosaic.linear_softmax_cross_entropy_loss_bwd_pallas_mosaic_tpu, **blocks),
    )


def _interpreted(plan: _Plan):
    if plan.implementation != "mosaic_tpu_interpret":
        return contextlib.nullcontext()
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.force_tpu_interpret_mode()


def _padded_rows(plan: _Plan, n: int) -> int:
    return n if plan.implementation == "xla" else -(-n // ROW_BLOCK) * ROW_BLOCK


def _pad_rows(x_Nx: jax.Array, rows: int, fill=0) -> jax.Array:
    widths = [(0, rows - x_Nx.shape[0])] + [(0, 0)] * (x_Nx.ndim - 1)
    return jnp.pad(x_Nx, widths, constant_values=fill)


def _no_labels(rows: int) -> jax.Array:
    """Labels outside the vocabulary: the kernels' one-hot term is then zero."""
    return jnp.full((rows,), -1, jnp.int32)


def _label_logits(h_NxD, unembed_DxV, y_safe_N):
    """h_n . W[:, y_n] in float32: elementwise products and a sum, never a bfloat16 matmul pass."""
    w_NxD = jnp.take(unembed_DxV, y_safe_N, axis=1).T
    return jnp.sum(h_NxD.astype(jnp.float32) * w_NxD.astype(jnp.float32), axis=-1)


def _local_forward(plan: _Plan, h_NxD, y_safe_N, unembed_DxV):
    """[N, 2]: each token's label logit and log-normaliser, on this shard's tokens."""
    n = h_NxD.shape[0]
    rows = _padded_rows(plan, n)
    fwd, _ = _kernels(plan)
    with _interpreted(plan):
        _, lse_R = fwd(_pad_rows(h_NxD, rows), _no_labels(rows), unembed_DxV)
    label_N = _label_logits(h_NxD, unembed_DxV, y_safe_N)
    return jnp.stack([label_N, lse_R[:n].astype(jnp.float32)], axis=-1)


def _local_grads(plan: _Plan, h_NxD, y_safe_N, lse_N, g_N, unembed_DxV):
    """(dh, dW) of sum_n g_n log p_n on this shard's tokens; dW in float32."""
    n = h_NxD.shape[0]
    rows = _padded_rows(plan, n)
    _, bwd = _kernels(plan)
    h_RxD, labels_R = _pad_rows(h_NxD, rows), _no_labels(rows)

    def softmax_part(weights_N, h_RxD):
        # exp(z - (lse - log c)) = c * softmax; c = 0 gives lse + inf and exp(-inf) = 0.
        shifted_R = _pad_rows(lse_N - jnp.log(weights_N), rows, jnp.inf)
        with _interpreted(plan):
            dh_RxD, dw_DxV = bwd(jnp.float32(1.0), shifted_R, h_RxD, labels_R, unembed_DxV)
        return dh_RxD[:n].astype(jnp.float32), dw_DxV.astype(jnp.float32)

    # d log p_n / d z_n = onehot(y_n) - p_n: the label's term, minus each softmax part.
    w_label_NxD = jnp.take(unembed_DxV, y_safe_N, axis=1).T.astype(jnp.float32)
    label_DxN = (g_N[:, None] * h_NxD.astype(jnp.float32)).T
    dh_pos_NxD, dw_pos_DxV = softmax_part(jnp.maximum(g_N, 0.0), h_RxD)
    dh_NxD = g_N[:, None] * w_label_NxD - dh_pos_NxD
    dw_DxV = (-dw_pos_DxV).at[:, y_safe_N].add(label_DxN)
    # The second call starts once the first one's [D, V] output is folded in, so the two
    # are never live together.
    dh_NxD, dw_DxV, h_RxD = jax.lax.optimization_barrier((dh_NxD, dw_DxV, h_RxD))
    dh_neg_NxD, dw_neg_DxV = softmax_part(jnp.maximum(-g_N, 0.0), h_RxD)
    dh_NxD = dh_NxD + dh_neg_NxD
    dw_DxV = dw_DxV + dw_neg_DxV
    return dh_NxD, dw_DxV


def _flat(local, per_token_BxLx, unembed_DxV):
    """`local` on [B*L, ...] token arrays; its per-token output back to [B, L, ...]."""
    b, l = per_token_BxLx[0].shape[:2]
    out = local(*[x.reshape((b * l,) + x.shape[2:]) for x in per_token_BxLx], unembed_DxV)
    tokens_Nx, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    return (tokens_Nx.reshape((b, l) + tokens_Nx.shape[1:]), *rest)


def _per_shard(local, per_token_BxLx, unembed_DxV, out_trailing: int, weight_grad: bool):
    """`local(*tokens, W)` once per shard of the mesh in context: tokens split as rows and
    positions are (batch axes, `sequence`), W whole on every shard (a Pallas call is opaque
    to XLA's partitioner). With `weight_grad`, local returns (per-token, dW) and dW is
    summed over the token shards, scattered over them along D where they divide it. Without
    a mesh, on the whole arrays. Returns a tuple."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _flat(local, per_token_BxLx, unembed_DxV)
    rows = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    seq = SEQUENCE_AXIS if SEQUENCE_AXIS in mesh.axis_names else None
    token_axes = rows + ((seq,) if seq else ())
    scatter = math.prod(mesh.shape[a] for a in token_axes)
    scatter = scatter > 1 and unembed_DxV.shape[0] % scatter == 0

    def sharded(*args):
        out = _flat(local, args[:-1], args[-1])
        if not weight_grad or not token_axes:
            return out
        if scatter:
            return out[0], jax.lax.psum_scatter(out[1], token_axes, scatter_dimension=0, tiled=True)
        return out[0], jax.lax.psum(out[1], token_axes)

    in_specs = [P(rows, seq, *([None] * (x.ndim - 2))) for x in per_token_BxLx]
    out_specs = (P(rows, seq, *([None] * out_trailing)),)
    if weight_grad:
        out_specs += (P(token_axes, None) if scatter else P(),)
    return jax.shard_map(sharded, mesh=mesh, in_specs=(*in_specs, P()), out_specs=out_specs, check_vma=False)(
        *per_token_BxLx, unembed_DxV
    )


def _targets(y_BxL, vocab: int):
    """(which targets are in the vocabulary, the targets clipped into it)."""
    return (y_BxL >= 0) & (y_BxL < vocab), jnp.clip(y_BxL, 0, vocab - 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _tokamax_logps(h_BxLxD, unembed_DxV, y_BxL, plan):
    return _tokamax_logps_fwd(h_BxLxD, unembed_DxV, y_BxL, plan)[0]


def _tokamax_logps_fwd(h_BxLxD, unembed_DxV, y_BxL, plan):
    valid_BxL, y_safe_BxL = _targets(y_BxL, unembed_DxV.shape[1])
    (label_lse_BxLx2,) = _per_shard(
        functools.partial(_local_forward, plan), (h_BxLxD, y_safe_BxL), unembed_DxV, 1, False
    )
    lse_BxL = label_lse_BxLx2[..., 1]
    logps_BxL = jnp.where(valid_BxL, label_lse_BxLx2[..., 0] - lse_BxL, 0.0)
    return logps_BxL, (h_BxLxD, unembed_DxV, y_BxL, lse_BxL)


def _tokamax_logps_bwd(plan, residuals, g_BxL):
    h_BxLxD, unembed_DxV, y_BxL, lse_BxL = residuals
    valid_BxL, y_safe_BxL = _targets(y_BxL, unembed_DxV.shape[1])
    g_BxL = jnp.where(valid_BxL, g_BxL.astype(jnp.float32), 0.0)
    dh_BxLxD, dw_DxV = _per_shard(
        functools.partial(_local_grads, plan), (h_BxLxD, y_safe_BxL, lse_BxL, g_BxL), unembed_DxV, 1, True
    )
    return dh_BxLxD.astype(h_BxLxD.dtype), dw_DxV.astype(unembed_DxV.dtype), None


_tokamax_logps.defvjp(_tokamax_logps_fwd, _tokamax_logps_bwd)


def tokamax_token_logps(
    hidden_BxLxD: jax.Array, unembed_DxV: jax.Array, targets_BxL: jax.Array, *, implementation: str
) -> jax.Array:
    """log p(targets) per token, float32 [B, L], as `logps.token_logps` (no soft-capping).

    implementation: mosaic_tpu (the TPU kernel), mosaic_tpu_interpret (the same through the
      Pallas TPU interpreter) or xla (Tokamax's reference, which holds [tokens, V] logits).
    Targets outside [0, V) give logp 0 and no gradient. Gradients flow into the hidden
    states and the unembedding.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Tokamax implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
    vocab = unembed_DxV.shape[1]
    block = vocab_block(vocab) if implementation != "xla" else vocab
    if block is None:
        raise ValueError(f"Tokamax's TPU kernel needs a vocabulary divisible by 128; V={vocab}")
    return _tokamax_logps(
        hidden_BxLxD, unembed_DxV, targets_BxL.astype(jnp.int32), _Plan(implementation, block)
    )
