"""Per-token log-probabilities and token KL without materialising full logits.

A 128k vocabulary times a few thousand tokens is tens of GiB of float32 logits, and
autodiff would keep them (and softmax) alive for the backward pass. Here the tokens
are cut into chunks of `token_chunk` rows and the vocabulary into chunks of
`vocab_chunk` columns; the log-normaliser is accumulated with an online logsumexp,
and a `jax.custom_vjp` recomputes each logits tile in the backward pass from the
saved per-token log-normaliser. Peak memory is therefore one
`token_chunk x vocab_chunk` float32 tile (plus the unavoidable `D x V` gradient of
the unembedding), whatever the batch, length and vocabulary.

Everything is computed in at least float32 (tiles are upcast one at a time; float64
inputs stay float64) with `Precision.HIGHEST`, so bf16 parameters give float32
log-probs, and float32 inputs agree with the naive `log_softmax(hidden @ W)` to ~1e-6
on every backend.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


class _Chunking(NamedTuple):
    """Static chunk plan: hashable, so it can be a `nondiff_argnum` of custom_vjp."""

    token_chunk: int
    vocab_chunk: int
    vocab: int
    softcap: float | None
    dtype: jnp.dtype


def _plan(
    num_tokens: int, vocab: int, token_chunk: int, vocab_chunk: int, softcap: float | None, *arrays: jax.Array
) -> _Chunking:
    if token_chunk <= 0 or vocab_chunk <= 0:
        raise ValueError(
            f"token_chunk and vocab_chunk must be positive, got {token_chunk} and "
            f"{vocab_chunk}; pick e.g. token_chunk=1024, vocab_chunk=8192."
        )
    if softcap is not None and softcap <= 0:
        raise ValueError(f"final_logit_softcap must be positive or None, got {softcap}.")
    # At least float32: bf16 models are scored in float32, float64 (x64 tests) stays.
    dtype = jnp.dtype(jnp.result_type(jnp.float32, *arrays))
    # A chunk larger than the data is just the data: no padding work for small inputs.
    return _Chunking(
        min(token_chunk, max(num_tokens, 1)),
        min(vocab_chunk, vocab),
        vocab,
        None if softcap is None else float(softcap),
        dtype,
    )


def _cap(z: jax.Array, softcap: float | None) -> jax.Array:
    return z if softcap is None else softcap * jnp.tanh(z / softcap)


def _cap_slope(capped: jax.Array, softcap: float | None) -> jax.Array:
    """d cap(z)/dz written in terms of cap(z): 1 - tanh^2 = 1 - (cap(z)/cap)^2."""
    return jnp.ones_like(capped) if softcap is None else 1.0 - jnp.square(capped / softcap)


def _vocab_tile(unembed_DxV: jax.Array, j: jax.Array, plan: _Chunking):
    """The j-th vocabulary tile in the compute dtype, its start, column ids, and which
    of its columns are new.

    The last tile is shifted left to stay inside the matrix (no padded copy of a
    multi-GiB unembedding); columns already covered by tile j-1 are marked stale so
    they are counted once.
    """
    nominal = j * plan.vocab_chunk
    start = jnp.minimum(nominal, plan.vocab - plan.vocab_chunk)
    w_DxC = lax.dynamic_slice_in_dim(unembed_DxV, start, plan.vocab_chunk, axis=1)
    cols_C = start + jnp.arange(plan.vocab_chunk)
    return w_DxC.astype(plan.dtype), start, cols_C, cols_C >= nominal


def _num_vocab_tiles(plan: _Chunking) -> int:
    return -(-plan.vocab // plan.vocab_chunk)


def _token_chunks(x_Nx: jax.Array, plan: _Chunking, fill) -> jax.Array:
    """Pads the token axis to a whole number of chunks and splits it: [C, S, ...].

    Chunk c holds tokens c, c + C, c + 2C, ... (strided, not contiguous): when the token
    axis is split over devices (rows over the batch axes, each row's tokens over
    `sequence`), every chunk is then split the same way, and the loop over chunks runs on
    every device's own tokens instead of gathering them all."""
    n = x_Nx.shape[0]
    num_chunks = -(-n // plan.token_chunk)
    pad = num_chunks * plan.token_chunk - n
    widths = [(0, pad)] + [(0, 0)] * (x_Nx.ndim - 1)
    x_Nx = jnp.pad(x_Nx, widths, constant_values=fill)
    return jnp.swapaxes(x_Nx.reshape((plan.token_chunk, num_chunks) + x_Nx.shape[1:]), 0, 1)


def _from_token_chunks(x_CxSx: jax.Array, n: int) -> jax.Array:
    """Undoes `_token_chunks`: [N, ...] in token order."""
    x_SxCx = jnp.swapaxes(x_CxSx, 0, 1)
    return x_SxCx.reshape((-1,) + x_SxCx.shape[2:])[:n]


def _logits_tile(h_SxD, w_DxC, plan):
    return _cap(jnp.dot(h_SxD.astype(plan.dtype), w_DxC, precision=_HIGHEST), plan.softcap)


# ---------------------------------------------------------------------------------
# log p(target): forward with online logsumexp, backward recomputing tiles.
# ---------------------------------------------------------------------------------


def _logps_chunk(h_SxD, y_S, unembed_DxV, plan):
    """(target logp, logsumexp) for one token chunk, one vocab tile at a time."""
    s = h_SxD.shape[0]

    def tile_step(carry, j):
        max_S, sumexp_S, target_S = carry
        w_DxC, _, cols_C, fresh_C = _vocab_tile(unembed_DxV, j, plan)
        z_SxC = _logits_tile(h_SxD, w_DxC, plan)
        z_SxC = jnp.where(fresh_C[None, :], z_SxC, -jnp.inf)
        new_max_S = jnp.maximum(max_S, jnp.max(z_SxC, axis=1))
        sumexp_S = sumexp_S * jnp.exp(max_S - new_max_S) + jnp.sum(
            jnp.exp(z_SxC - new_max_S[:, None]), axis=1
        )
        hit_SxC = (cols_C[None, :] == y_S[:, None]) & fresh_C[None, :]
        target_S = target_S + jnp.sum(jnp.where(hit_SxC, z_SxC, 0.0), axis=1)
        return (new_max_S, sumexp_S, target_S), None

    zeros = jnp.zeros((s,), plan.dtype)
    init = (jnp.full((s,), -jnp.inf, plan.dtype), zeros, zeros)
    (max_S, sumexp_S, target_S), _ = lax.scan(tile_step, init, jnp.arange(_num_vocab_tiles(plan)))
    lse_S = max_S + jnp.log(sumexp_S)
    return target_S - lse_S, lse_S


def _valid_targets(y_N, plan):
    return (y_N >= 0) & (y_N < plan.vocab)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked_logps(h_NxD, unembed_DxV, y_N, plan):
    return _chunked_logps_fwd(h_NxD, unembed_DxV, y_N, plan)[0]


def _chunked_logps_fwd(h_NxD, unembed_DxV, y_N, plan):
    n = h_NxD.shape[0]
    h_CxSxD = _token_chunks(h_NxD, plan, 0)
    y_CxS = _token_chunks(y_N, plan, -1)
    logps_CxS, lse_CxS = lax.map(
        lambda args: _logps_chunk(args[0], args[1], unembed_DxV, plan), (h_CxSxD, y_CxS)
    )
    logps_N = _from_token_chunks(logps_CxS, n)
    logps_N = jnp.where(_valid_targets(y_N, plan), logps_N, 0.0)
    return logps_N, (h_NxD, unembed_DxV, y_N, _from_token_chunks(lse_CxS, n))


def _chunked_logps_bwd(plan, residuals, g_N):
    h_NxD, unembed_DxV, y_N, lse_N = residuals
    g_N = jnp.where(_valid_targets(y_N, plan), g_N.astype(plan.dtype), 0.0)

    def chunk_step(d_unembed_DxV, args):
        h_SxD, y_S, lse_S, g_S = args
        hc_SxD = h_SxD.astype(plan.dtype)

        def tile_step(carry, j):
            dh_SxD, d_unembed_DxV = carry
            w_DxC, start, cols_C, fresh_C = _vocab_tile(unembed_DxV, j, plan)
            z_SxC = _logits_tile(h_SxD, w_DxC, plan)
            p_SxC = jnp.exp(z_SxC - lse_S[:, None])
            hit_SxC = (cols_C[None, :] == y_S[:, None]).astype(plan.dtype)
            # d logp / d z = onehot - softmax, chained through the softcap.
            dz_SxC = g_S[:, None] * (hit_SxC - p_SxC) * _cap_slope(z_SxC, plan.softcap)
            dz_SxC = jnp.where(fresh_C[None, :], dz_SxC, 0.0)
            dh_SxD = dh_SxD + jnp.dot(dz_SxC, w_DxC.T, precision=_HIGHEST)
            dw_DxC = jnp.dot(hc_SxD.T, dz_SxC, precision=_HIGHEST)
            old_DxC = lax.dynamic_slice_in_dim(d_unembed_DxV, start, plan.vocab_chunk, axis=1)
            d_unembed_DxV = lax.dynamic_update_slice_in_dim(d_unembed_DxV, old_DxC + dw_DxC, start, axis=1)
            return (dh_SxD, d_unembed_DxV), None

        init = (jnp.zeros(h_SxD.shape, plan.dtype), d_unembed_DxV)
        (dh_SxD, d_unembed_DxV), _ = lax.scan(tile_step, init, jnp.arange(_num_vocab_tiles(plan)))
        return d_unembed_DxV, dh_SxD

    chunks = (
        _token_chunks(h_NxD, plan, 0),
        _token_chunks(y_N, plan, -1),
        _token_chunks(lse_N, plan, 0.0),
        _token_chunks(g_N, plan, 0.0),
    )
    d_unembed_DxV, dh_CxSxD = lax.scan(chunk_step, jnp.zeros(unembed_DxV.shape, plan.dtype), chunks)
    dh_NxD = _from_token_chunks(dh_CxSxD, h_NxD.shape[0])
    return dh_NxD.astype(h_NxD.dtype), d_unembed_DxV.astype(unembed_DxV.dtype), None


_chunked_logps.defvjp(_chunked_logps_fwd, _chunked_logps_bwd)


def token_logps(
    hidden_BxLxD: jax.Array,
    unembed_DxV: jax.Array,
    targets_BxL: jax.Array,
    *,
    final_logit_softcap: float | None = None,
    token_chunk: int = 1024,
    vocab_chunk: int = 8192,
) -> jax.Array:
    """log p(targets) per token, float32 (or wider) [B, L], never holding [B, L, V] logits.

    hidden_BxLxD: final hidden states (after the model's final norm).
    unembed_DxV: the LM head; for tied embeddings pass `embedding_VxD.T`.
    targets_BxL: the token scored from hidden at the same position (the caller
      shifts). Ids outside [0, V) (e.g. an ignore label of -100) give logp 0 and no
      gradient; mask them out of sums anyway.
    final_logit_softcap: Gemma-2 style `cap * tanh(logits / cap)`, or None.
    token_chunk, vocab_chunk: tile size; memory is ~token_chunk * vocab_chunk * 4
      bytes per live tile. Gradients flow into hidden and unembed.
    """
    b, l, d = hidden_BxLxD.shape
    if unembed_DxV.shape[0] != d:
        raise ValueError(
            f"unembed_DxV has shape {unembed_DxV.shape} but hidden width is {d}; pass the "
            "LM head as [hidden, vocab] (for tied embeddings: embedding.T)."
        )
    if targets_BxL.shape != (b, l):
        raise ValueError(f"targets_BxL shape {targets_BxL.shape} != hidden batch/length {(b, l)}.")
    plan = _plan(
        b * l, unembed_DxV.shape[1], token_chunk, vocab_chunk, final_logit_softcap, hidden_BxLxD, unembed_DxV
    )
    logps_N = _chunked_logps(
        hidden_BxLxD.reshape(b * l, d), unembed_DxV, targets_BxL.reshape(-1).astype(jnp.int32), plan
    )
    return logps_N.reshape(b, l)


# ---------------------------------------------------------------------------------
# log sum_v p(v)^2 (WPO's weights): forward only, no gradient.
# ---------------------------------------------------------------------------------


def _log_sum_sq_chunk(h_SxD, unembed_DxV, plan):
    """log sum_v p(v)^2 = logsumexp(2z) - 2 logsumexp(z), both accumulated online with one max."""
    s = h_SxD.shape[0]

    def tile_step(carry, j):
        max_S, sumexp_S, sumexp2_S = carry
        w_DxC, _, _, fresh_C = _vocab_tile(unembed_DxV, j, plan)
        z_SxC = jnp.where(fresh_C[None, :], _logits_tile(h_SxD, w_DxC, plan), -jnp.inf)
        new_max_S = jnp.maximum(max_S, jnp.max(z_SxC, axis=1))
        rescale_S = jnp.exp(max_S - new_max_S)
        e_SxC = jnp.exp(z_SxC - new_max_S[:, None])
        sumexp_S = sumexp_S * rescale_S + jnp.sum(e_SxC, axis=1)
        sumexp2_S = sumexp2_S * jnp.square(rescale_S) + jnp.sum(jnp.square(e_SxC), axis=1)
        return (new_max_S, sumexp_S, sumexp2_S), None

    zeros = jnp.zeros((s,), plan.dtype)
    init = (jnp.full((s,), -jnp.inf, plan.dtype), zeros, zeros)
    (_, sumexp_S, sumexp2_S), _ = lax.scan(tile_step, init, jnp.arange(_num_vocab_tiles(plan)))
    return jnp.log(sumexp2_S) - 2.0 * jnp.log(sumexp_S)


def token_log_sum_sq_probs(
    hidden_BxLxD: jax.Array,
    unembed_DxV: jax.Array,
    *,
    final_logit_softcap: float | None = None,
    token_chunk: int = 1024,
    vocab_chunk: int = 8192,
) -> jax.Array:
    """log sum_v p(v)^2 of each position's next-token distribution, float32 (or wider) [B, L].

    WPO's weights align each token's log-prob with this (TRL's `log_sum_sq_probs`); they
    carry no gradient, so this is one forward pass over the vocabulary with the tiling of
    `token_logps` and nothing kept for a backward.
    """
    b, l, d = hidden_BxLxD.shape
    hidden_BxLxD, unembed_DxV = lax.stop_gradient((hidden_BxLxD, unembed_DxV))
    plan = _plan(
        b * l, unembed_DxV.shape[1], token_chunk, vocab_chunk, final_logit_softcap, hidden_BxLxD, unembed_DxV
    )
    h_CxSxD = _token_chunks(hidden_BxLxD.reshape(b * l, d), plan, 0)
    out_CxS = lax.map(lambda h_SxD: _log_sum_sq_chunk(h_SxD, unembed_DxV, plan), h_CxSxD)
    return _from_token_chunks(out_CxS, b * l).reshape(b, l)


# ---------------------------------------------------------------------------------
# Token KL(pi_ref || pi_theta) over the full vocabulary, gradient into the policy.
# ---------------------------------------------------------------------------------


def _kl_chunk(hp_SxD, hr_SxE, policy_DxV, ref_ExV, plan):
    """One pass over the vocabulary: both log-normalisers and sum_v p_ref (z_ref - z_pol).

    KL = sum_v p_ref (z_ref - z_pol) - lse_ref + lse_pol, so a third online
    accumulator (rescaled with the reference max) is all that is needed.
    """
    s = hp_SxD.shape[0]

    def tile_step(carry, j):
        max_p, sum_p, max_r, sum_r, cross_r = carry
        wp_DxC, _, _, fresh_C = _vocab_tile(policy_DxV, j, plan)
        wr_ExC, _, _, _ = _vocab_tile(ref_ExV, j, plan)
        zp_SxC = jnp.where(fresh_C, _logits_tile(hp_SxD, wp_DxC, plan), -jnp.inf)
        zr_SxC = jnp.where(fresh_C, _logits_tile(hr_SxE, wr_ExC, plan), -jnp.inf)
        new_max_p = jnp.maximum(max_p, jnp.max(zp_SxC, axis=1))
        sum_p = sum_p * jnp.exp(max_p - new_max_p) + jnp.sum(jnp.exp(zp_SxC - new_max_p[:, None]), axis=1)
        new_max_r = jnp.maximum(max_r, jnp.max(zr_SxC, axis=1))
        rescale = jnp.exp(max_r - new_max_r)
        er_SxC = jnp.exp(zr_SxC - new_max_r[:, None])
        gap_SxC = jnp.where(fresh_C, zr_SxC - zp_SxC, 0.0)
        sum_r = sum_r * rescale + jnp.sum(er_SxC, axis=1)
        cross_r = cross_r * rescale + jnp.sum(er_SxC * gap_SxC, axis=1)
        return (new_max_p, sum_p, new_max_r, sum_r, cross_r), None

    neg_inf = jnp.full((s,), -jnp.inf, plan.dtype)
    zeros = jnp.zeros((s,), plan.dtype)
    (max_p, sum_p, max_r, sum_r, cross_r), _ = lax.scan(
        tile_step, (neg_inf, zeros, neg_inf, zeros, zeros), jnp.arange(_num_vocab_tiles(plan))
    )
    lse_p = max_p + jnp.log(sum_p)
    lse_r = max_r + jnp.log(sum_r)
    return cross_r / sum_r - lse_r + lse_p, lse_p, lse_r


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_kl(hp_NxD, policy_DxV, hr_NxE, ref_ExV, plan):
    return _chunked_kl_fwd(hp_NxD, policy_DxV, hr_NxE, ref_ExV, plan)[0]


def _chunked_kl_fwd(hp_NxD, policy_DxV, hr_NxE, ref_ExV, plan):
    n = hp_NxD.shape[0]
    kl_CxS, lse_p_CxS, lse_r_CxS = lax.map(
        lambda args: _kl_chunk(args[0], args[1], policy_DxV, ref_ExV, plan),
        (_token_chunks(hp_NxD, plan, 0), _token_chunks(hr_NxE, plan, 0)),
    )
    lse_p_N, lse_r_N = _from_token_chunks(lse_p_CxS, n), _from_token_chunks(lse_r_CxS, n)
    residuals = (hp_NxD, policy_DxV, hr_NxE, ref_ExV, lse_p_N, lse_r_N)
    return _from_token_chunks(kl_CxS, n), residuals


def _chunked_kl_bwd(plan, residuals, g_N):
    hp_NxD, policy_DxV, hr_NxE, ref_ExV, lse_p_N, lse_r_N = residuals

    def chunk_step(d_policy_DxV, args):
        hp_SxD, hr_SxE, lse_p_S, lse_r_S, g_S = args
        hpc_SxD = hp_SxD.astype(plan.dtype)

        def tile_step(carry, j):
            dh_SxD, d_policy_DxV = carry
            wp_DxC, start, _, fresh_C = _vocab_tile(policy_DxV, j, plan)
            wr_ExC, _, _, _ = _vocab_tile(ref_ExV, j, plan)
            zp_SxC = _logits_tile(hp_SxD, wp_DxC, plan)
            zr_SxC = _logits_tile(hr_SxE, wr_ExC, plan)
            # d KL / d z_pol = softmax_pol - softmax_ref.
            dz_SxC = g_S[:, None] * (jnp.exp(zp_SxC - lse_p_S[:, None]) - jnp.exp(zr_SxC - lse_r_S[:, None]))
            dz_SxC = dz_SxC * _cap_slope(zp_SxC, plan.softcap)
            dz_SxC = jnp.where(fresh_C[None, :], dz_SxC, 0.0)
            dh_SxD = dh_SxD + jnp.dot(dz_SxC, wp_DxC.T, precision=_HIGHEST)
            dw_DxC = jnp.dot(hpc_SxD.T, dz_SxC, precision=_HIGHEST)
            old_DxC = lax.dynamic_slice_in_dim(d_policy_DxV, start, plan.vocab_chunk, axis=1)
            d_policy_DxV = lax.dynamic_update_slice_in_dim(d_policy_DxV, old_DxC + dw_DxC, start, axis=1)
            return (dh_SxD, d_policy_DxV), None

        (dh_SxD, d_policy_DxV), _ = lax.scan(
            tile_step, (jnp.zeros(hp_SxD.shape, plan.dtype), d_policy_DxV), jnp.arange(_num_vocab_tiles(plan))
        )
        return d_policy_DxV, dh_SxD

    chunks = (
        _token_chunks(hp_NxD, plan, 0),
        _token_chunks(hr_NxE, plan, 0),
        _token_chunks(lse_p_N, plan, 0.0),
        _token_chunks(lse_r_N, plan, 0.0),
        _token_chunks(g_N.astype(plan.dtype), plan, 0.0),
    )
    d_policy_DxV, dh_CxSxD = lax.scan(chunk_step, jnp.zeros(policy_DxV.shape, plan.dtype), chunks)
    dh_NxD = _from_token_chunks(dh_CxSxD, hp_NxD.shape[0])
    # The reference is a fixed target: no cotangent (None = symbolic zero, no D x V buffer).
    return dh_NxD.astype(hp_NxD.dtype), d_policy_DxV.astype(policy_DxV.dtype), None, None


_chunked_kl.defvjp(_chunked_kl_fwd, _chunked_kl_bwd)


def token_kl(
    policy_hidden_BxLxD: jax.Array,
    policy_unembed_DxV: jax.Array,
    ref_hidden_BxLxE: jax.Array,
    ref_unembed_ExV: jax.Array,
    *,
    final_logit_softcap: float | None = None,
    token_chunk: int = 1024,
    vocab_chunk: int = 8192,
) -> jax.Array:
    """KL_t = sum_v p_ref(v) (log p_ref(v) - log p_theta(v)) per token, float32+ [B, L].

    The full-vocabulary KL of SparsePO / TDPO, computed with the same tiling as
    `token_logps`. Gradients flow only into the policy hidden states and unembedding;
    the reference side is treated as a constant (stop_gradient). The reference may
    have a different hidden width E than the policy, but the same vocabulary.
    """
    b, l, d = policy_hidden_BxLxD.shape
    e = ref_hidden_BxLxE.shape[-1]
    if ref_hidden_BxLxE.shape[:2] != (b, l):
        raise ValueError(
            f"reference hidden {ref_hidden_BxLxE.shape} and policy hidden "
            f"{policy_hidden_BxLxD.shape} must share batch and length."
        )
    if policy_unembed_DxV.shape[0] != d or ref_unembed_ExV.shape[0] != e:
        raise ValueError(
            "unembeddings must be [hidden, vocab] matching their hidden states; got "
            f"{policy_unembed_DxV.shape} for width {d} and {ref_unembed_ExV.shape} "
            f"for width {e}."
        )
    if policy_unembed_DxV.shape[1] != ref_unembed_ExV.shape[1]:
        raise ValueError(
            f"policy vocab {policy_unembed_DxV.shape[1]} != reference vocab "
            f"{ref_unembed_ExV.shape[1]}: token KL needs one shared vocabulary."
        )
    plan = _plan(
        b * l,
        policy_unembed_DxV.shape[1],
        token_chunk,
        vocab_chunk,
        final_logit_softcap,
        policy_hidden_BxLxD,
        policy_unembed_DxV,
        ref_hidden_BxLxE,
        ref_unembed_ExV,
    )
    kl_N = _chunked_kl(
        policy_hidden_BxLxD.reshape(b * l, d),
        policy_unembed_DxV,
        lax.stop_gradient(ref_hidden_BxLxE.reshape(b * l, e)),
        lax.stop_gradient(ref_unembed_ExV),
        plan,
    )
    return kl_N.reshape(b, l)
