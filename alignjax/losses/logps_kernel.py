"""Which kernel scores the labels' per-token log-probs (`model.logps_kernel`).

chunked            `logps.token_logps`: vocabulary-chunked XLA with a recomputing backward;
                   runs everywhere and serves every objective (soft-capping, full-vocabulary
                   token KL, WPO's weights).
tokamax            Tokamax's fused linear cross-entropy kernel (`logps_tokamax.py`) on TPU;
                   on CPU its XLA implementation (for tests: it holds [tokens, V] logits).
                   Refused with logit soft-capping, a vocabulary its TPU kernel cannot
                   tile, on GPU (tokamax 0.0.12 has no GPU kernel), and by objectives that
                   need each token's whole distribution.
tokamax_interpret  the TPU kernel through the Pallas TPU interpreter: for tests on CPU.
auto               chunked everywhere. Compiled for a TPU slice, Tokamax's head needs several
                   times the chunked head's memory and runs its backward kernel twice
                   (docs/fitting.md, "Log-prob kernel").
"""

from __future__ import annotations

import importlib.util

import jax

from alignjax.losses import logps_tokamax
from alignjax.losses.logps import token_logps
from alignjax.models import attention
from alignjax.models.config import LOGPS_KERNELS

TOKAMAX = ("tokamax", "tokamax_interpret")


def resolve(
    kernel: str, *, final_logit_softcap: float | None, vocab: int, platform: str | None = None
) -> str:
    """The implementation that scores labels' log-probs: "chunked" or one of
    `logps_tokamax.IMPLEMENTATIONS`; an explicit Tokamax choice it cannot serve is an error."""
    if kernel not in LOGPS_KERNELS:
        raise ValueError(f"model.logps_kernel={kernel!r} is not one of {LOGPS_KERNELS}")
    if kernel in ("auto", "chunked"):
        return "chunked"
    if final_logit_softcap is not None:
        raise ValueError(
            f"model.logps_kernel={kernel}: Tokamax's fused cross-entropy has no logit soft-capping "
            f"(this model caps logits at {final_logit_softcap}); use chunked or auto"
        )
    if importlib.util.find_spec("tokamax") is None:
        raise ValueError(
            f"model.logps_kernel={kernel} needs the tokamax package: pip install -e '.[tokamax]'"
        )
    platform = platform or attention.platform()
    if kernel == "tokamax_interpret":
        implementation = "mosaic_tpu_interpret"
    elif platform in ("tpu", "cpu"):
        implementation = "mosaic_tpu" if platform == "tpu" else "xla"
    else:
        raise ValueError(
            f"model.logps_kernel=tokamax: tokamax 0.0.12 has no {platform} kernel (its XLA "
            "implementation holds [tokens, vocab] logits); use chunked or auto here"
        )
    if implementation != "xla" and logps_tokamax.vocab_block(vocab) is None:
        raise ValueError(
            f"model.logps_kernel={kernel}: Tokamax's TPU kernel tiles the vocabulary in blocks of a "
            f"multiple of 128 that divides it; {vocab} has none. Use chunked or auto"
        )
    return implementation


def require_full_distribution(kernel: str, what: str) -> None:
    """Objectives that need each token's whole next-token distribution run the chunked code:
    an explicit Tokamax choice there is an error (auto serves them)."""
    if kernel in TOKAMAX:
        raise ValueError(
            f"model.logps_kernel={kernel}: {what} needs each token's whole distribution, and "
            "Tokamax's fused cross-entropy gives only the label's log-prob; use chunked or auto"
        )


def label_logps(
    hidden_BxLxD: jax.Array,
    unembed_DxV: jax.Array,
    targets_BxL: jax.Array,
    *,
    kernel: str,
    final_logit_softcap: float | None = None,
    token_chunk: int = 1024,
    vocab_chunk: int = 8192,
) -> jax.Array:
    """log p(targets) per token, float32 (or wider) [B, L], by the kernel `kernel` resolves to
    for the platform being traced for. The arguments are `logps.token_logps`'s; token_chunk
    and vocab_chunk tile the chunked code only."""
    implementation = resolve(kernel, final_logit_softcap=final_logit_softcap, vocab=unembed_DxV.shape[1])
    if implementation == "chunked":
        return token_logps(
            hidden_BxLxD,
            unembed_DxV,
            targets_BxL,
            final_logit_softcap=final_logit_softcap,
            token_chunk=token_chunk,
            vocab_chunk=vocab_chunk,
        )
    return logps_tokamax.tokamax_token_logps(
        hidden_BxLxD, unembed_DxV, targets_BxL, implementation=implementation
    )
