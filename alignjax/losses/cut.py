"""CUT: Contrastive Unlikelihood Training from natural-language judgments (docs/methods.md, section 5).

Layout. The caller runs ONE forward over 2B rows: rows [0, B) are the with-judgment
view (Align-P for satisfactory examples: prompt -> response; Align-N for
unsatisfactory ones: prompt + judgment -> response), rows [B, 2B) the
without-judgment view of the same responses (Misalign: prompt -> response; ignored
for satisfactory examples). Scores must be response-aligned: column r is the r-th
response token in both views, whatever the prompt lengths (`response_logps` does
this gather). Then split with `split_views` and call `cut_loss`.

Inappropriate tokens of an unsatisfactory response (probabilities detached):
  ratio form (default):    p_with / p_without > lam        (log-space, no underflow)
  difference (paper text): p_with - lam * p_without > 0     (probability space)

  L1 = -(1/N) [ sum_{t not in U} log p_without + sum_{t in U} a * p_with^g * log(1 - p_without) ]
  L2 = token-mean NLL of the with-judgment view (Align-P and Align-N)
  paper: L = L1 + L2;   authors' code: L = (L2 + L1) / 2 with g = 0 and 1 - p (or p)
  replaced by 1e-5 where it is exactly 0, and L = L2 for a batch without negatives.
With lam > 1 a flagged token has p_without < 1/lam, so log(1 - p_without) is finite
and the paper form needs no floor.
N counts the response tokens of unsatisfactory examples. The focal weight p_with^g
is detached: it weights the penalty and must not push the Align-N likelihood down.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from alignjax.losses.dpo_pair_losses import log1mexp
from alignjax.losses.sequence import as_float

DETECTIONS = ("ratio", "difference")
FORMS = ("paper", "code")


@dataclasses.dataclass(frozen=True)
class CUTConfig:
    """lam: detection threshold (1.1 or 1.2); a: unlikelihood weight; g: focal exponent.

    form "paper" sums L1 + L2; form "code" follows the authors' code ((L2 + L1)/2,
    no focal term, 1e-5 floor). detection picks the ratio or difference test. A training
    config's `loss.cut` section holds these keys.
    """

    lam: float = 1.1
    a: float = 0.5
    g: float = 0.0
    detection: str = "ratio"  # ratio, or the paper's difference test
    form: str = "paper"  # paper (L1 + L2) or code (the authors' (NLL + UL) / 2)

    def __post_init__(self):
        if self.detection not in DETECTIONS or self.form not in FORMS:
            raise ValueError(
                f"loss.cut.detection={self.detection!r} (choose {DETECTIONS}), "
                f"loss.cut.form={self.form!r} (choose {FORMS})."
            )
        if self.lam <= 0 or self.a < 0 or self.g < 0:
            raise ValueError(
                f"loss.cut needs lam > 0, a >= 0, g >= 0; got lam={self.lam}, a={self.a}, g={self.g}."
            )
        if self.form == "code" and self.g != 0:
            raise ValueError(
                "loss.cut.form='code' reproduces the authors' code, which has no "
                "focal term: set g=0, or use form='paper' for g > 0."
            )


def response_logps(token_logps_BxL: jax.Array, response_start_B: jax.Array, response_len: int) -> jax.Array:
    """Re-indexes per-token scores so column r is response token r: [B, response_len].

    response_start_B: position (in the scored, already shifted frame) of each row's
    first response token. Columns past the row's end read clamped positions: mask
    them with the response mask.
    """
    positions_BxR = jnp.asarray(response_start_B, jnp.int32)[:, None] + jnp.arange(response_len)[None, :]
    positions_BxR = jnp.clip(positions_BxR, 0, token_logps_BxL.shape[1] - 1)
    return jnp.take_along_axis(token_logps_BxL, positions_BxR, axis=1)


def split_views(logps_2BxR: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(with-judgment rows, without-judgment rows) of the concatenated forward."""
    if logps_2BxR.shape[0] % 2:
        raise ValueError(
            f"the CUT forward batch has {logps_2BxR.shape[0]} rows; it must be "
            "[with-judgment views; without-judgment views], an even number."
        )
    half = logps_2BxR.shape[0] // 2
    return logps_2BxR[:half], logps_2BxR[half:]


def flag_inappropriate(with_logps_BxR, without_logps_BxR, lam: float, detection: str = "ratio") -> jax.Array:
    """Boolean [B, R]: tokens the judgment makes much more likely (no gradient)."""
    with_logps_BxR = jax.lax.stop_gradient(as_float(with_logps_BxR))
    without_logps_BxR = jax.lax.stop_gradient(as_float(without_logps_BxR))
    if detection == "ratio":
        return with_logps_BxR - without_logps_BxR > math.log(lam)
    return jnp.exp(with_logps_BxR) - lam * jnp.exp(without_logps_BxR) > 0.0


def _log_terms_code(without_logps_BxR, flagged_BxR):
    """Authors' code: log of (1 - p if flagged else p), exact zeros replaced by 1e-5."""
    p = jnp.exp(without_logps_BxR)
    x = jnp.where(flagged_BxR, 1.0 - p, p)
    return jnp.log(jnp.where(x == 0.0, 1e-5, x))


def cut_loss(
    with_logps_BxR: jax.Array,
    without_logps_BxR: jax.Array,
    response_mask_BxR: jax.Array,
    is_negative_B: jax.Array,
    config: CUTConfig = CUTConfig(),
):
    """(loss, metrics) for a batch of judged responses, response-aligned [B, R].

    with_logps_BxR: log p(y_t | x, [j], y_<t), the Align-P / Align-N view (gets the
      NLL gradient).
    without_logps_BxR: log p(y_t | x, y_<t), the Misalign view (only rows with
      is_negative_B are used).
    response_mask_BxR: 1 on response tokens. is_negative_B: unsatisfactory response.
    Metrics: nll (L2), unlikelihood (L1), flagged_fraction (over the response tokens
    of negative examples), num_flagged.
    """
    keep_BxR = response_mask_BxR.astype(bool)
    negative_BxR = keep_BxR & jnp.asarray(is_negative_B, bool)[:, None]
    with_BxR, without_BxR = as_float(with_logps_BxR), as_float(without_logps_BxR)
    flagged_BxR = flag_inappropriate(with_BxR, without_BxR, config.lam, config.detection)
    flagged_BxR = flagged_BxR & negative_BxR

    dtype = with_BxR.dtype
    num_likelihood = jnp.maximum(jnp.sum(keep_BxR), 1).astype(dtype)
    nll = -jnp.sum(jnp.where(keep_BxR, with_BxR, 0.0)) / num_likelihood

    if config.form == "code":
        # Safe input: masked-out columns may hold anything, including logp = 0.
        safe_without = jnp.where(negative_BxR, without_BxR, -1.0)
        terms_BxR = _log_terms_code(safe_without, flagged_BxR)
        terms_BxR = jnp.where(flagged_BxR, config.a * terms_BxR, terms_BxR)
    else:
        safe_without = jnp.where(flagged_BxR, without_BxR, -1.0)
        focal_BxR = jnp.exp(config.g * jax.lax.stop_gradient(with_BxR))
        unlikely_BxR = config.a * focal_BxR * log1mexp(safe_without)
        terms_BxR = jnp.where(flagged_BxR, unlikely_BxR, without_BxR)
    num_negative = jnp.sum(negative_BxR)
    unlikelihood = -jnp.sum(jnp.where(negative_BxR, terms_BxR, 0.0)) / jnp.maximum(num_negative, 1).astype(
        dtype
    )

    if config.form == "code":
        loss = jnp.where(num_negative > 0, 0.5 * (nll + unlikelihood), nll)
    else:
        loss = nll + unlikelihood
    num_flagged = jnp.sum(flagged_BxR)
    metrics = {
        "nll": jax.lax.stop_gradient(nll),
        "unlikelihood": jax.lax.stop_gradient(unlikelihood),
        "flagged_fraction": num_flagged.astype(dtype) / jnp.maximum(num_negative, 1).astype(dtype),
        "num_flagged": num_flagged,
    }
    return loss, metrics
