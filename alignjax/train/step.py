"""The jitted pieces of a training step: losses over batches, gradients, updates.

A step is two compiled functions: `grads` (forward + backward of the stage's loss on one
batch) and `update` (clip, optimizer, and the non-finite guard). Gradient accumulation
sums `grads` over micro-batches on the device before one `update`. The reference model
is either a frozen copy of the parameters evaluated in the same step (no gradient), or
absent for reference-free losses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from alignjax.data import ops as data_ops
from alignjax.losses import token_logps
from alignjax.losses.dpo import DPOConfig, dpo_loss, init_dpo_state
from alignjax.losses.dpo_family import PairLogps
from alignjax.losses.sft import sft_loss
from alignjax.models import decoder, head
from alignjax.models.config import ModelConfig
from alignjax.train.config import LossSection


def input_aligned_logps(params, cfg: ModelConfig, loss: LossSection, tokens_BxL, positions_BxL,
                        segment_ids_BxL, extra_embeddings=None):
  """log p(tokens[t] | tokens[<t]) at column t (0 at t = 0), the batches' mask convention."""
  hidden_BxLxD = decoder.apply(params, cfg, tokens_BxL, positions_BxL, segment_ids_BxL, extra_embeddings)
  unembed_DxV = head.unembedding_DxV(params, cfg).astype(cfg.dtype)
  logps_BxLm1 = token_logps(
      hidden_BxLxD[:, :-1], unembed_DxV, tokens_BxL[:, 1:],
      final_logit_softcap=cfg.final_logit_softcap,
      token_chunk=loss.token_chunk, vocab_chunk=loss.vocab_chunk,
  )
  return jnp.pad(logps_BxLm1, ((0, 0), (1, 0)))


class PairStats(NamedTuple):
  chosen_P: jax.Array
  rejected_P: jax.Array
  chosen_len_P: jax.Array
  rejected_len_P: jax.Array


def pair_stats(params, cfg, loss, batch) -> PairStats:
  logps_BxL = input_aligned_logps(params, cfg, loss, batch.tokens_BxL, batch.positions_BxL,
                                  batch.segment_ids_BxL)
  chosen_P, rejected_P = data_ops.pair_sums(logps_BxL, batch)
  chosen_len_P, rejected_len_P = data_ops.pair_sums(jnp.ones_like(logps_BxL), batch)
  return PairStats(chosen_P, rejected_P, chosen_len_P, rejected_len_P)


def dpo_config(loss: LossSection) -> DPOConfig:
  return DPOConfig(
      loss_type=loss.names, loss_weights=tuple(loss.weights) if loss.weights else None,
      beta=loss.beta, label_smoothing=loss.label_smoothing, discopop_tau=loss.discopop_tau,
      simpo_beta=loss.simpo_beta, simpo_gamma=loss.simpo_gamma, orpo_lambda=loss.orpo_lambda,
  )


@dataclasses.dataclass(frozen=True)
class Objective:
  """A stage's loss: `fn(params, ref_params, batch, loss_state) -> (loss, (metrics, state, per_pair))`."""

  fn: Callable[..., Any]
  needs_reference: bool
  init_state: Callable[[], Any]


def _per_condition(values_P, condition_P, valid_P, num_conditions: int):
  """Mean of values per condition id (0 = none), [num_conditions + 1]."""
  n = num_conditions + 1
  total = jax.ops.segment_sum(values_P * valid_P, condition_P, num_segments=n)
  count = jax.ops.segment_sum(valid_P, condition_P, num_segments=n)
  return total / jnp.maximum(count, 1.0), count


def make_objective(cfg: ModelConfig, loss: LossSection, num_conditions: int = 0) -> Objective:
  kind = loss.stage_kind
  if kind == "sft":
    def sft_fn(params, ref_params, batch, state):
      del ref_params
      logps_BxL = input_aligned_logps(params, cfg, loss, batch.tokens_BxL, batch.positions_BxL,
                                      batch.segment_ids_BxL)
      mask_BxL = batch.loss_mask_BxL * (batch.segment_ids_BxL > 0)
      value, metrics = sft_loss(logps_BxL, mask_BxL)
      return value, (metrics, state, {})

    return Objective(sft_fn, False, lambda: {})

  if kind == "preference":
    dpo = dpo_config(loss)

    def preference_fn(params, ref_params, batch, state):
      policy = pair_stats(params, cfg, loss, batch)
      ref_chosen = ref_rejected = None
      if dpo.needs_reference:
        ref = jax.lax.stop_gradient(pair_stats(ref_params, cfg, loss, batch))
        ref_chosen, ref_rejected = ref.chosen_P, ref.rejected_P
      pairs = PairLogps(policy.chosen_P, policy.rejected_P, policy.chosen_len_P,
                        policy.rejected_len_P, ref_chosen, ref_rejected)
      valid_P = batch.pair_valid_P.astype(jnp.float32)
      value, metrics, state = dpo_loss(pairs, dpo, state, valid_B=valid_P)
      from alignjax.losses.dpo import _metric_rewards

      chosen_r_P, rejected_r_P = jax.lax.stop_gradient(_metric_rewards(pairs, dpo))
      margin_P = chosen_r_P - rejected_r_P
      if num_conditions:
        acc_C, count_C = _per_condition((margin_P > 0).astype(jnp.float32), batch.condition_id_P,
                                        valid_P, num_conditions)
        metrics["rewards/accuracies_by_condition"] = acc_C
        metrics["count_by_condition"] = count_C
      per_pair = {"margin_P": margin_P, "valid_P": valid_P, "condition_P": batch.condition_id_P}
      return value, (metrics, state, per_pair)

    return Objective(preference_fn, dpo.needs_reference, lambda: init_dpo_state(dpo))

  raise ValueError(f"loss.type={loss.type!r}: stage kind {kind!r} has no training step yet")


def make_grads_fn(objective: Objective):
  def grads_fn(params, ref_params, batch, state):
    (value, (metrics, state, _)), grads = jax.value_and_grad(objective.fn, has_aux=True)(
        params, ref_params, batch, state
    )
    metrics = dict(metrics, loss=value)
    return grads, metrics, state

  return grads_fn


def make_eval_fn(objective: Objective):
  def eval_fn(params, ref_params, batch, state):
    value, (metrics, _, per_pair) = objective.fn(params, ref_params, batch, state)
    return dict(metrics, loss=value), per_pair

  return eval_fn


def make_update_fn(tx: optax.GradientTransformation):
  def update_fn(params, opt_state, grads, loss_value):
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # A non-finite step leaves parameters and optimizer state exactly as they were.
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    params = jax.tree.map(keep, new_params, params)
    opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    return params, opt_state, {"grad_norm": grad_norm, "skipped": (~finite).astype(jnp.int32)}

  return update_fn


def add_trees(a, b):
  return jax.tree.map(jnp.add, a, b)
