"""Per-pair losses of the DPO family, with TRL's names and formulas.

Each function maps a `PairLogps` batch (and a `DPOConfig`) to a per-pair loss [B];
`dpo_combined.py` holds the table that names them and their weighted sum. Notation follows
docs/methods.md: r_w, r_l are summed policy-minus-reference log-ratios over response
tokens, D = r_w - r_l, e is label smoothing. The losses built on the chosen-rejected
difference read f-DPO scores (`score_margin`), which are r_w, r_l under the default
reverse KL.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.nn import log_sigmoid, sigmoid

from alignjax.losses.f_divergence import f_divergence_scores
from alignjax.losses.sequence import as_float


class PairLogps(NamedTuple):
    """Per-sequence summed log-probs over response tokens and response lengths, [B].

    The reference fields may be None for reference-free losses (simpo, orpo, cpo,
    sft). Lengths are token counts of the response (see `sequence_logps`).
    """

    chosen_logps_B: jax.Array
    rejected_logps_B: jax.Array
    chosen_len_B: jax.Array
    rejected_len_B: jax.Array
    ref_chosen_logps_B: jax.Array | None = None
    ref_rejected_logps_B: jax.Array | None = None
    # Pair weights (0 for unused slots, MO-ODPO's per-objective weights); None: all 1.
    # Per-pair terms are weighed by the caller's mean; token-pooled terms (the NLL) here.
    weight_B: jax.Array | None = None
    # LD-DPO (`ld_alpha`) down-weights the tails in chosen_logps_B; the NLL term reads the
    # chosen log-probs as they are (TRL's `sft`): their plain sums. None: chosen_logps_B.
    chosen_plain_logps_B: jax.Array | None = None
    # WPO (`use_weighting`): sum over response tokens of log p(y_t) - log sum_v p(v)^2.
    chosen_aligned_logps_B: jax.Array | None = None
    rejected_aligned_logps_B: jax.Array | None = None


class RunningMean(NamedTuple):
    """bco_pair's reward baseline: mean of per-step batch-mean rewards so far."""

    mean: jax.Array
    count: jax.Array


def chosen_logratios(p: PairLogps) -> jax.Array:
    return as_float(p.chosen_logps_B) - as_float(p.ref_chosen_logps_B)


def rejected_logratios(p: PairLogps) -> jax.Array:
    return as_float(p.rejected_logps_B) - as_float(p.ref_rejected_logps_B)


def margin(p: PairLogps) -> jax.Array:
    """D = r_w - r_l."""
    return chosen_logratios(p) - rejected_logratios(p)


def chosen_scores(p: PairLogps, cfg) -> jax.Array:
    """f'(pi/pi_ref) of the chosen responses under cfg.f_divergence_type (r_w for reverse KL)."""
    return f_divergence_scores(chosen_logratios(p), cfg.f_divergence_type, cfg.f_alpha_divergence_coef)


def rejected_scores(p: PairLogps, cfg) -> jax.Array:
    return f_divergence_scores(rejected_logratios(p), cfg.f_divergence_type, cfg.f_alpha_divergence_coef)


def score_margin(p: PairLogps, cfg) -> jax.Array:
    """The f-DPO margin: D itself for reverse KL."""
    return chosen_scores(p, cfg) - rejected_scores(p, cfg)


def wpo_weights(p: PairLogps) -> jax.Array:
    """WPO's pair weight [B]: exp of each response's token-mean aligned log-prob, chosen times
    rejected. A weight, not a target: no gradient flows through it."""
    chosen_B = jnp.exp(_per_token(p.chosen_aligned_logps_B, p.chosen_len_B))
    rejected_B = jnp.exp(_per_token(p.rejected_aligned_logps_B, p.rejected_len_B))
    return jax.lax.stop_gradient(chosen_B * rejected_B)


def _per_token(x_B: jax.Array, len_B: jax.Array) -> jax.Array:
    # An empty response has no tokens to average; clamp like TRL instead of dividing by 0.
    return as_float(x_B) / jnp.maximum(as_float(len_B), 1.0)


def _smoothed_sigmoid(z_B: jax.Array, e: float) -> jax.Array:
    """cDPO: -(1-e) logsig(z) - e logsig(-z)."""
    return -(1.0 - e) * log_sigmoid(z_B) - e * log_sigmoid(-z_B)


def chosen_nll(p: PairLogps) -> jax.Array:
    """Token-mean NLL of the chosen responses over the whole batch (TRL's `sft` term), each
    pair's tokens counted with its weight; a zero-weight slot adds nothing even when it
    holds tokens."""
    plain_B = p.chosen_logps_B if p.chosen_plain_logps_B is None else p.chosen_plain_logps_B
    logps_B, len_B = as_float(plain_B), as_float(p.chosen_len_B)
    if p.weight_B is None:
        return -jnp.sum(logps_B) / jnp.maximum(jnp.sum(len_B), 1.0)
    weight_B = as_float(p.weight_B)
    used_B = weight_B > 0
    total = jnp.sum(jnp.where(used_B, weight_B * logps_B, 0.0))
    tokens = jnp.sum(jnp.where(used_B, weight_B * len_B, 0.0))
    return -total / jnp.maximum(tokens, jnp.finfo(tokens.dtype).tiny)


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x <= 0, accurate at both ends and NaN-free in the gradient."""
    near_zero = x > -math.log(2.0)
    safe_near = jnp.where(near_zero, x, -1.0)
    safe_far = jnp.where(near_zero, -1.0, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(safe_near)), jnp.log1p(-jnp.exp(safe_far)))


# --- losses against a reference ---------------------------------------------------


def sigmoid_loss(p, cfg, state):
    return _smoothed_sigmoid(cfg.beta * score_margin(p, cfg), cfg.label_smoothing)


def hinge_loss(p, cfg, state):
    return jax.nn.relu(1.0 - cfg.beta * score_margin(p, cfg))


def ipo_loss(p, cfg, state):
    # Length-normalised as in TRL (confirmed there with the IPO authors).
    gap = _per_token(chosen_scores(p, cfg), p.chosen_len_B) - _per_token(
        rejected_scores(p, cfg), p.rejected_len_B
    )
    return jnp.square(gap - 1.0 / (2.0 * cfg.beta))


def robust_loss(p, cfg, state):
    z, e = cfg.beta * score_margin(p, cfg), cfg.label_smoothing
    return (-(1.0 - e) * log_sigmoid(z) + e * log_sigmoid(-z)) / (1.0 - 2.0 * e)


def exo_pair_loss(p, cfg, state):
    z, e = cfg.beta * score_margin(p, cfg), cfg.label_smoothing
    return sigmoid(z) * (log_sigmoid(z) - math.log1p(-e)) + sigmoid(-z) * (log_sigmoid(-z) - math.log(e))


def nca_pair_loss(p, cfg, state):
    reward_w, reward_l = cfg.beta * chosen_logratios(p), cfg.beta * rejected_logratios(p)
    return -log_sigmoid(reward_w) - 0.5 * log_sigmoid(-reward_w) - 0.5 * log_sigmoid(-reward_l)


def bco_batch_reward(p, cfg) -> jax.Array:
    """Mean implicit reward over chosen and rejected of this batch (no gradient)."""
    rewards = jnp.concatenate([cfg.beta * chosen_logratios(p), cfg.beta * rejected_logratios(p)])
    return jax.lax.stop_gradient(jnp.mean(rewards))


def bco_init_state() -> RunningMean:
    return RunningMean(mean=jnp.zeros((), jnp.float32), count=jnp.zeros((), jnp.float32))


def bco_update_state(p, cfg, state: RunningMean) -> RunningMean:
    # TRL's RunningMoments fed one batch mean per step: a running mean of batch means,
    # updated *before* it is used as this step's delta.
    count = state.count + 1.0
    reward = bco_batch_reward(p, cfg).astype(state.mean.dtype)
    return RunningMean(mean=state.mean + (reward - state.mean) / count, count=count)


def bco_pair_loss(p, cfg, state: RunningMean):
    delta = jax.lax.stop_gradient(state.mean)
    return -log_sigmoid(cfg.beta * chosen_logratios(p) - delta) - log_sigmoid(
        -(cfg.beta * rejected_logratios(p) - delta)
    )


def sppo_hard_loss(p, cfg, state):
    half = 0.5 / cfg.beta
    return jnp.square(chosen_logratios(p) - half) + jnp.square(rejected_logratios(p) + half)


def aot_loss(p, cfg, state):
    # Sorting is across the batch: the loss of pair i is not a function of pair i alone.
    policy_gaps = jnp.sort(as_float(p.chosen_logps_B) - as_float(p.rejected_logps_B))
    ref_gaps = jnp.sort(as_float(p.ref_chosen_logps_B) - as_float(p.ref_rejected_logps_B))
    return _smoothed_sigmoid(cfg.beta * (policy_gaps - ref_gaps), cfg.label_smoothing)


def aot_pair_loss(p, cfg, state):
    gaps = jnp.sort(chosen_logratios(p)) - jnp.sort(rejected_logratios(p))
    return _smoothed_sigmoid(cfg.beta * gaps, cfg.label_smoothing)


def apo_zero_loss(p, cfg, state):
    return 1.0 - sigmoid(cfg.beta * chosen_logratios(p)) + sigmoid(cfg.beta * rejected_logratios(p))


def apo_down_loss(p, cfg, state):
    return sigmoid(cfg.beta * chosen_logratios(p)) + 1.0 - sigmoid(cfg.beta * margin(p))


def discopop_loss(p, cfg, state):
    z = cfg.beta * score_margin(p, cfg)
    # exp(-z) * sig(z/tau) in log space: the naive product is inf * 0 = NaN for z << 0.
    exp_part = jnp.exp(-z + log_sigmoid(z / cfg.discopop_tau))
    return -log_sigmoid(z) * sigmoid(-z / cfg.discopop_tau) + exp_part


def sigmoid_norm_loss(p, cfg, state):
    gap = _per_token(chosen_scores(p, cfg), p.chosen_len_B) - _per_token(
        rejected_scores(p, cfg), p.rejected_len_B
    )
    return -log_sigmoid(cfg.beta * gap)


# --- reference-free losses ---------------------------------------------------------


def sft_loss(p, cfg, state):
    return jnp.broadcast_to(chosen_nll(p), jnp.shape(p.chosen_logps_B))


def simpo_loss(p, cfg, state):
    gap = _per_token(p.chosen_logps_B, p.chosen_len_B) - _per_token(p.rejected_logps_B, p.rejected_len_B)
    return _smoothed_sigmoid(cfg.simpo_beta * gap - cfg.simpo_gamma, cfg.label_smoothing)


def cpo_loss(p, cfg, state):
    gap = as_float(p.chosen_logps_B) - as_float(p.rejected_logps_B)
    return _smoothed_sigmoid(cfg.beta * gap, cfg.label_smoothing)


def orpo_log_odds(p) -> jax.Array:
    """log odds(y_w) - log odds(y_l) with odds = P / (1 - P), P the per-token mean prob."""
    avg_w = _per_token(p.chosen_logps_B, p.chosen_len_B)
    avg_l = _per_token(p.rejected_logps_B, p.rejected_len_B)
    return (avg_w - avg_l) - (log1mexp(avg_w) - log1mexp(avg_l))


def orpo_loss(p, cfg, state):
    return chosen_nll(p) - cfg.orpo_lambda * log_sigmoid(orpo_log_odds(p))


# --- implicit rewards (for TRL's rewards/* metrics) ---------------------------------


def logratio_rewards(p, cfg):
    return cfg.beta * chosen_logratios(p), cfg.beta * rejected_logratios(p)


def simpo_rewards(p, cfg):
    return (
        cfg.simpo_beta * _per_token(p.chosen_logps_B, p.chosen_len_B),
        cfg.simpo_beta * _per_token(p.rejected_logps_B, p.rejected_len_B),
    )


def orpo_rewards(p, cfg):
    return (
        cfg.orpo_lambda * _per_token(p.chosen_logps_B, p.chosen_len_B),
        cfg.orpo_lambda * _per_token(p.rejected_logps_B, p.rejected_len_B),
    )


def cpo_rewards(p, cfg):
    return cfg.beta * as_float(p.chosen_logps_B), cfg.beta * as_float(p.rejected_logps_B)
