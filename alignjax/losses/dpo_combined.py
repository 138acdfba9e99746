"""The DPO family combined: the table of named losses (their formulas in
`dpo_pair_losses.py`), their options (`DPOConfig`) and their weighted sum, like TRL's.

    config = DPOConfig(loss_type=("sigmoid", "sft"), loss_weights=(1.0, 0.2))
    state = init_dpo_state(config)          # {} unless a loss carries state (bco_pair)
    loss, metrics, state = dpo_loss(pairs, config, state)

`pairs` is a `PairLogps` of per-sequence summed log-probs (see `sequence_logps`).
The loss is sum_k weight_k * mean_B(loss_k). Metrics use TRL's names.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from alignjax.losses import dpo_pair_losses as fam
from alignjax.losses.dpo_pair_losses import PairLogps
from alignjax.losses.f_divergence import F_DIVERGENCE_LOSSES, F_DIVERGENCES
from alignjax.losses.sequence import as_float


class LossSpec(NamedTuple):
    """One row of the registry.

    fn(pairs, config, state) -> per-pair loss [B].
    needs_reference: whether ref_*_logps must be given.
    rewards(pairs, config) -> (chosen [B], rejected [B]) implicit rewards for the
      rewards/* metrics, or None when the loss has no reward of its own (sft).
    init_state() / update_state(pairs, config, state): for losses that carry state
      across steps (bco_pair's running reward mean); None otherwise.
    """

    fn: Callable[..., jax.Array]
    needs_reference: bool
    rewards: Callable[..., tuple[jax.Array, jax.Array]] | None
    init_state: Callable[[], Any] | None = None
    update_state: Callable[..., Any] | None = None


_REF = dict(needs_reference=True, rewards=fam.logratio_rewards)

LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(fam.sigmoid_loss, **_REF),
    "hinge": LossSpec(fam.hinge_loss, **_REF),
    "ipo": LossSpec(fam.ipo_loss, **_REF),
    "robust": LossSpec(fam.robust_loss, **_REF),
    "exo_pair": LossSpec(fam.exo_pair_loss, **_REF),
    "nca_pair": LossSpec(fam.nca_pair_loss, **_REF),
    "bco_pair": LossSpec(
        fam.bco_pair_loss, **_REF, init_state=fam.bco_init_state, update_state=fam.bco_update_state
    ),
    "sppo_hard": LossSpec(fam.sppo_hard_loss, **_REF),
    "aot": LossSpec(fam.aot_loss, **_REF),
    "aot_pair": LossSpec(fam.aot_pair_loss, **_REF),
    # Current TRL's name for aot_pair.
    "aot_unpaired": LossSpec(fam.aot_pair_loss, **_REF),
    "apo_zero": LossSpec(fam.apo_zero_loss, **_REF),
    "apo_down": LossSpec(fam.apo_down_loss, **_REF),
    "discopop": LossSpec(fam.discopop_loss, **_REF),
    "sigmoid_norm": LossSpec(fam.sigmoid_norm_loss, **_REF),
    "sft": LossSpec(fam.sft_loss, needs_reference=False, rewards=None),
    "simpo": LossSpec(fam.simpo_loss, needs_reference=False, rewards=fam.simpo_rewards),
    "orpo": LossSpec(fam.orpo_loss, needs_reference=False, rewards=fam.orpo_rewards),
    "cpo": LossSpec(fam.cpo_loss, needs_reference=False, rewards=fam.cpo_rewards),
}


@dataclasses.dataclass(frozen=True)
class DPOOptions:
    """The DPO family's hyper-parameters, with TRL's names and defaults (DPOConfig /
    CPOConfig / ORPOConfig). The `loss:` section of a training config is one, so its keys
    are these names; the other methods read the ones they share (`beta`, `label_smoothing`).

    beta: DPO temperature (0.1).
    label_smoothing: e of cDPO / robust / exo_pair / aot / simpo / cpo (0.0).
    discopop_tau: DiscoPOP modulation temperature (0.05).
    simpo_beta, simpo_gamma: SimPO's beta (2.0, as in the paper) and target reward
      margin gamma in reward units (TRL's simpo_gamma, 0.5).
    orpo_lambda: weight of ORPO's odds-ratio term (TRL's ORPOConfig.beta, 0.1).
    f_divergence_type, f_alpha_divergence_coef: f-DPO's regulariser ("reverse_kl",
      "forward_kl", "js_divergence", "alpha_divergence" with its alpha, 0.5), for the
      losses in F_DIVERGENCE_LOSSES (`f_divergence.py`).
    ld_alpha: LD-DPO's weight of the response tails beyond the pair's shared length, in
      [0, 1]; the caller builds `PairLogps` with it (`length_desensitised.py`). None: off.
    use_weighting: WPO: every per-pair loss times the pair's weight (`wpo_weights`); the
      `PairLogps` must carry the aligned sums.
    reference_free: the reference assigns every response log-prob 0 (older TRL's
      `reference_free`; TRL 1.16 has no such key), so no reference model is needed.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    simpo_beta: float = 2.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    ld_alpha: float | None = None
    use_weighting: bool = False
    reference_free: bool = False


@dataclasses.dataclass(frozen=True)
class DPOConfig(DPOOptions):
    """The options and the losses they serve: `loss_type`, one name or a tuple of names from
    LOSSES, summed with `loss_weights` (default all 1.0). RPO is ("sigmoid", "sft") with
    weights (1.0, rpo_alpha).
    """

    loss_type: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None

    @classmethod
    def with_options(cls, options: DPOOptions, loss_type, loss_weights=None) -> DPOConfig:
        """These loss types under `options` (any DPOOptions, such as a config's `loss:` section)."""
        values = {f.name: getattr(options, f.name) for f in dataclasses.fields(DPOOptions)}
        return cls(loss_type=loss_type, loss_weights=loss_weights, **values)

    def __post_init__(self):
        names = (self.loss_type,) if isinstance(self.loss_type, str) else tuple(self.loss_type)
        object.__setattr__(self, "loss_type", names)
        weights = (
            tuple(float(w) for w in self.loss_weights)
            if self.loss_weights is not None
            else (1.0,) * len(names)
        )
        object.__setattr__(self, "loss_weights", weights)
        unknown = [n for n in names if n not in LOSSES]
        if not names or unknown:
            raise ValueError(f"DPOConfig.loss_type {names}: unknown {unknown}; choose from {sorted(LOSSES)}.")
        if len(weights) != len(names):
            raise ValueError(
                f"DPOConfig.loss_weights has {len(weights)} entries for "
                f"{len(names)} loss types {names}; give one weight per loss."
            )
        if self.beta <= 0 or self.simpo_beta <= 0 or self.discopop_tau <= 0:
            raise ValueError("DPOConfig.beta, simpo_beta and discopop_tau must be positive.")
        e = self.label_smoothing
        if not 0.0 <= e < 0.5:
            raise ValueError(f"DPOConfig.label_smoothing={e} must be in [0, 0.5).")
        if "exo_pair" in names and e <= 0.0:
            raise ValueError(
                "loss_type 'exo_pair' needs label_smoothing > 0 (its target "
                "distribution is [1-e, e]); TRL used to substitute 1e-3."
            )
        self._check_options(names)

    def _check_options(self, names):
        """TRL's DPOConfig options: each error names the option (its `loss:` key too)."""
        if self.f_divergence_type not in F_DIVERGENCES:
            raise ValueError(
                f"DPOConfig.f_divergence_type={self.f_divergence_type!r}: use one of "
                f"{', '.join(F_DIVERGENCES)}."
            )
        unsupported = [n for n in names if n not in F_DIVERGENCE_LOSSES]
        if self.f_divergence_type != "reverse_kl" and unsupported:
            raise ValueError(
                f"DPOConfig.f_divergence_type={self.f_divergence_type!r} does not apply to loss types "
                f"{unsupported}: only {', '.join(F_DIVERGENCE_LOSSES)} depend on the log-ratios through "
                "the chosen-rejected difference alone (as TRL); use reverse_kl with these."
            )
        if not math.isfinite(self.f_alpha_divergence_coef):
            raise ValueError(
                f"DPOConfig.f_alpha_divergence_coef={self.f_alpha_divergence_coef} must be finite."
            )
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(
                f"DPOConfig.ld_alpha={self.ld_alpha} must be in [0, 1] (1: plain DPO, 0: tails "
                "beyond the shared length dropped), or None for off."
            )
        sorted_losses = [n for n in names if n in ("aot", "aot_pair", "aot_unpaired")]
        if self.use_weighting and sorted_losses:
            raise ValueError(
                f"DPOConfig.use_weighting: loss types {sorted_losses} sort the batch, so a pair's "
                "loss is not its own and WPO's per-pair weight has nothing to weigh (as TRL)."
            )

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free and any(LOSSES[n].needs_reference for n in self.loss_type)


def init_dpo_state(config: DPOConfig) -> dict[str, Any]:
    """State for the stateful losses in config ({} when there are none)."""
    return {
        n: LOSSES[n].init_state() for n in dict.fromkeys(config.loss_type) if LOSSES[n].init_state is not None
    }


def _with_zero_reference(pairs: PairLogps, config: DPOConfig) -> PairLogps:
    """Reference-free DPO: the reference's log-probs are 0, so log-ratios are the policy's."""
    if not config.reference_free:
        return pairs
    zeros_B = jnp.zeros_like(as_float(pairs.chosen_logps_B))
    return pairs._replace(ref_chosen_logps_B=zeros_B, ref_rejected_logps_B=zeros_B)


def _check_inputs(pairs: PairLogps, config: DPOConfig, state) -> None:
    has_ref = pairs.ref_chosen_logps_B is not None and pairs.ref_rejected_logps_B is not None
    if config.needs_reference and not has_ref:
        needing = [n for n in config.loss_type if LOSSES[n].needs_reference]
        raise ValueError(
            f"loss types {needing} need reference log-probs: set "
            "PairLogps.ref_chosen_logps_B and ref_rejected_logps_B (from the "
            "reference model or precomputed), or use a reference-free loss "
            "(simpo, orpo, cpo, sft)."
        )
    if config.use_weighting and (
        pairs.chosen_aligned_logps_B is None or pairs.rejected_aligned_logps_B is None
    ):
        raise ValueError(
            "use_weighting (WPO) needs PairLogps.chosen_aligned_logps_B and rejected_aligned_logps_B: "
            "the summed log p(y_t) - log sum_v p(v)^2 over each response (`token_log_sum_sq_probs`)."
        )
    stateful = [n for n in config.loss_type if LOSSES[n].init_state is not None]
    missing = [n for n in stateful if not state or n not in state]
    if missing:
        raise ValueError(
            f"loss types {missing} carry state across steps: pass "
            "state=init_dpo_state(config) on the first step and the returned "
            "state afterwards."
        )


def implicit_rewards(pairs, config):
    """(chosen, rejected) implicit rewards of the first loss that defines them, [B]."""
    pairs = _with_zero_reference(pairs, config)
    for name in config.loss_type:
        if LOSSES[name].rewards is not None:
            return LOSSES[name].rewards(pairs, config)
    if pairs.ref_chosen_logps_B is not None:
        return fam.logratio_rewards(pairs, config)
    return fam.cpo_rewards(pairs, config)


def dpo_loss(
    pairs: PairLogps, config: DPOConfig, state: dict[str, Any] | None = None, valid_B: jax.Array | None = None
):
    """Weighted sum of the configured losses, TRL metrics, and the next state.

    valid_B: 1 for real pairs, 0 for the unused slots of a packed or padded batch;
      every batch mean (losses and metrics) then runs over real pairs only. Non-negative
      weights other than 1 weigh pairs in those means (MO-ODPO's per-objective winners).

    Returns (loss scalar, metrics dict of scalars, new state). Metrics:
    rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
    logps/chosen, logps/rejected (summed), loss/<name> per loss type, and
    nll_loss / log_odds_ratio / log_odds_chosen / bco/delta where they apply.
    """
    pairs = _with_zero_reference(pairs, config)
    _check_inputs(pairs, config, state)
    state = dict(state or {})
    for name in dict.fromkeys(config.loss_type):
        if LOSSES[name].update_state is not None:
            state[name] = LOSSES[name].update_state(pairs, config, state[name])

    if valid_B is None:
        mean = jnp.mean
    else:
        pairs = pairs._replace(weight_B=valid_B)  # for the token-pooled NLL terms
        weight_B = as_float(valid_B)
        total = jnp.maximum(jnp.sum(weight_B), jnp.finfo(weight_B.dtype).tiny)
        mean = lambda x_B: jnp.sum(jnp.where(weight_B > 0, as_float(x_B) * weight_B, 0.0)) / total  # noqa: E731
    loss = jnp.zeros((), as_float(pairs.chosen_logps_B).dtype)
    metrics = {}
    wpo_B = fam.wpo_weights(pairs) if config.use_weighting else None
    for name, weight in zip(config.loss_type, config.loss_weights):
        loss_B = LOSSES[name].fn(pairs, config, state.get(name))
        component = mean(loss_B if wpo_B is None else loss_B * wpo_B)
        metrics[f"loss/{name}"] = component
        loss = loss + weight * component

    chosen_rewards_B, rejected_rewards_B = jax.lax.stop_gradient(implicit_rewards(pairs, config))
    metrics.update(
        {
            "rewards/chosen": mean(chosen_rewards_B),
            "rewards/rejected": mean(rejected_rewards_B),
            "rewards/accuracies": mean((chosen_rewards_B > rejected_rewards_B).astype(loss.dtype)),
            "rewards/margins": mean(chosen_rewards_B - rejected_rewards_B),
            "logps/chosen": mean(jax.lax.stop_gradient(as_float(pairs.chosen_logps_B))),
            "logps/rejected": mean(jax.lax.stop_gradient(as_float(pairs.rejected_logps_B))),
        }
    )
    if {"sft", "orpo", "cpo"} & set(config.loss_type):
        metrics["nll_loss"] = jax.lax.stop_gradient(fam.chosen_nll(pairs))
    if "orpo" in config.loss_type:
        log_odds_B = jax.lax.stop_gradient(fam.orpo_log_odds(pairs))
        metrics["log_odds_ratio"] = mean(jax.nn.log_sigmoid(log_odds_B))
        metrics["log_odds_chosen"] = mean(log_odds_B)
    if "bco_pair" in state:
        metrics["bco/delta"] = state["bco_pair"].mean
    return loss, metrics, state
