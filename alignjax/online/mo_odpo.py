"""MO-ODPO's data: preference pairs the policy writes for itself (docs/methods.md, section 6).

Each step, for every prompt of a prompt batch: draw objective weights w ~ Dirichlet(alpha)
(optionally snapped to a grid), write them into the system prompt, sample responses from
the current policy, score each with every reward function on the *unconditioned*
prompt, scalarise with w (minus a penalty for responses that never reached EOS), and
keep the best as chosen and the worst as rejected. The pairs then go through exactly the
tokenisation and batching of offline preference data, so the trainer runs sigmoid DPO on
them unchanged, the reference also seeing the weighted prompt.

Weights and sampling keys are functions of (seed, step, process), so a resumed run draws
what the uninterrupted one would have.

Two baselines of the MO-ODPO paper are the same loop with one change each:
`fixed_weights` trains a static-weight policy (every prompt scored with one weight vector),
`weights_in_prompt: false` an unconditioned one (weights drawn and used for scoring, but
never shown to the policy).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import numpy as np

from alignjax.data.examples import ExampleProcessor
from alignjax.data.record_types import make_builder
from alignjax.data.records import Skipped
from alignjax.generation import process_rows
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.generation.stop_ids import stop_ids
from alignjax.online.rollout import (
    OnlineSource,
    Roller,
    RolloutPlan,
    batch_prompts,
    plain_prompt_text,
    raw_record,
)
from alignjax.rewards.functions import build_reward

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MOODPOSection:
    """`rewards`: one registry spec per objective, in the order data.templates.weights names them."""

    rewards: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    alpha: float = 1.0
    grid: int | None = None  # snap weights to multiples of 1/grid
    num_samples: int = 2
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    missing_eos_penalty: float = 0.0
    # One pair per objective (best vs worst on that objective alone), weighted by its
    # weight: the loss is sum_k w_k DPO_k, instead of DPO on the scalarised score.
    per_objective_winners: bool = False
    # A static-weight policy: every prompt gets these weights (in the order of `rewards`)
    # instead of a Dirichlet draw. None: drawn per prompt.
    fixed_weights: list[float] | None = None
    # False: the weights only scalarise the rewards and never reach the prompt, so the
    # policy cannot condition on them (the unconditioned baseline).
    weights_in_prompt: bool = True

    def __post_init__(self):
        w = self.fixed_weights
        if w is None:
            return
        if not w or any(not isinstance(x, (int, float)) or isinstance(x, bool) or x < 0 for x in w):
            raise ValueError(f"loss.mo_odpo.fixed_weights={w!r}: give one number >= 0 per objective")
        if abs(sum(w) - 1.0) > 1e-6:
            raise ValueError(
                f"loss.mo_odpo.fixed_weights={w!r} sums to {sum(w):g}; the weights must sum to 1"
            )
        if self.rewards and len(w) != len(self.rewards):
            raise ValueError(
                f"loss.mo_odpo.fixed_weights has {len(w)} entries for the {len(self.rewards)} "
                "objectives of loss.mo_odpo.rewards"
            )


def rollout_plan(section: MOODPOSection) -> RolloutPlan:
    return RolloutPlan(
        section.num_samples,
        SamplingConfig(
            max_new_tokens=section.max_new_tokens,
            temperature=section.temperature,
            top_k=section.top_k,
            top_p=section.top_p,
        ),
    )


def draw_weights(rng: np.random.Generator, n: int, k: int, alpha: float, grid: int | None) -> np.ndarray:
    """[n, k] weights on the simplex; with a grid, rounded to multiples of 1/grid summing to 1."""
    w_NxK = rng.dirichlet(np.full(k, alpha), size=n)
    if grid:
        units_NxK = np.floor(w_NxK * grid).astype(np.int64)
        # Largest remainders get the units lost to flooring, so each row sums to exactly grid.
        short_N = grid - units_NxK.sum(-1)
        order_NxK = np.argsort(-(w_NxK * grid - units_NxK), axis=-1)
        for i in range(n):
            units_NxK[i, order_NxK[i, : short_N[i]]] += 1
        w_NxK = units_NxK / grid
    return w_NxK


class OnlinePairSource(OnlineSource):
    """Iterator-like: `next_for(params, step)` -> a PairBatch of freshly sampled pairs."""

    def __init__(
        self,
        prompt_pipeline,
        pair_cfg,
        tokenizer,
        model_cfg,
        section: MOODPOSection,
        seed: int,
        per_host_batch: int,
        pad_id: int,
        generation_config: dict[str, Any] | None = None,  # generation_config.json: more stop ids
        mesh=None,  # the run's mesh, where sampling runs (None: the parameters' own)
    ):
        objectives = pair_cfg.templates.objectives
        if not objectives:
            raise ValueError(
                "MO-ODPO needs data.templates.weights naming the objectives, e.g. "
                "'Answer with weights length={length:.0%}, keyword={keyword:.0%}.'"
            )
        if len(section.rewards) != len(objectives):
            raise ValueError(
                f"loss.mo_odpo.rewards has {len(section.rewards)} entries for the "
                f"{len(objectives)} objectives {objectives} in data.templates.weights"
            )
        if section.fixed_weights is not None and len(section.fixed_weights) != len(objectives):
            raise ValueError(
                f"loss.mo_odpo.fixed_weights has {len(section.fixed_weights)} entries for the "
                f"{len(objectives)} objectives {objectives} in data.templates.weights"
            )
        if section.num_samples < 2:
            raise ValueError("loss.mo_odpo.num_samples must be at least 2 (chosen and rejected)")
        super().__init__(prompt_pipeline)
        self.objectives = objectives
        self.section = section
        self.seed = seed
        self.rewards = [
            build_reward(spec, where=f"loss.mo_odpo.rewards[{i}]") for i, spec in enumerate(section.rewards)
        ]
        # A sampled answer can be unusable as a record (empty, say): such a prompt yields no
        # pair this step and is counted, never fatal.
        pair_cfg = dataclasses.replace(pair_cfg, on_bad_record="skip")
        self.pair_cfg = pair_cfg
        self.pairs = ExampleProcessor(pair_cfg, tokenizer)
        pairs_per_prompt = len(objectives) if section.per_objective_winners else 1
        self.builder = make_builder(pair_cfg, per_host_batch * pairs_per_prompt, pad_id)
        sampling = dataclasses.replace(
            rollout_plan(section).sampling,
            eos_ids=stop_ids(tokenizer, model_cfg, generation_config),
            pad_id=pad_id,
        )
        self.roller = Roller(pair_cfg, tokenizer, model_cfg, sampling, seed, mesh)

    def next_for(self, params, step: int, max_attempts: int = 8):
        """A batch with at least one pair, or None when `max_attempts` prompt batches in a row
        gave none (every prompt's samples tied: the trainer then skips the update). Passed-over
        prompts are counted in online/prompts_without_pair.

        Sampling is one program over every process, so the processes draw in step: one that has
        its batch joins the others' further draws with no rows until every process has one."""
        batch, passed_over = None, 0
        for attempt in range(max_attempts):
            draw = step * max_attempts + attempt
            if batch is not None:
                self.roller.sample(params, [], self.section.num_samples, draw)
            else:
                batch = self._try(params, draw)
                if batch is None:
                    passed_over += self.last_metrics["online/prompts_without_pair"]
            if process_rows.every_process(batch is not None):
                break
        if batch is not None:
            self.last_metrics["online/prompts_without_pair"] += passed_over
            return batch
        log.warning(
            "MO-ODPO step %d: in %d prompt batches every prompt's samples scored the same; the policy "
            "has stopped exploring (raise loss.mo_odpo.temperature or num_samples to keep it learning)",
            step,
            max_attempts,
        )
        return None

    def _try(self, params, draw: int):
        prompts = batch_prompts(next(self.prompt_pipeline))
        rng = np.random.default_rng([self.seed, draw, jax.process_index()])
        if self.section.fixed_weights is not None:
            w_NxK = np.tile(np.asarray(self.section.fixed_weights, np.float64), (len(prompts), 1))
        else:
            w_NxK = draw_weights(
                rng, len(prompts), len(self.objectives), self.section.alpha, self.section.grid
            )
        weights = [dict(zip(self.objectives, map(float, w_K))) for w_K in w_NxK]
        # What the policy (and the reference) is given: the prompt, and the weights unless
        # the section hides them.
        shown = [{"weights": w} if self.section.weights_in_prompt else {} for w in weights]
        s = self.section.num_samples
        rollout = self.roller.sample(params, [{"prompt": p, **c} for p, c in zip(prompts, shown)], s, draw)
        texts, hit_eos_NxS = rollout.texts, rollout.hit_eos.reshape(len(prompts), s)
        plain = [plain_prompt_text(p) for p in prompts for _ in range(s)]
        scores_NxSxK = np.stack([np.asarray(r(plain, texts), np.float64) for r in self.rewards], -1)
        scores_NxSxK = scores_NxSxK.reshape(len(prompts), s, len(self.objectives))
        scalar_NxS = (scores_NxSxK * w_NxK[:, None, :]).sum(-1)
        scalar_NxS -= self.section.missing_eos_penalty * (~hit_eos_NxS)

        self.builder.reset()
        kept = identical = 0
        pair_weights = []
        # Scalarised: one pair per prompt on s = sum_k w_k R_k. Per objective: one pair per
        # prompt and objective on R_k alone, weighted by w_k.
        if self.section.per_objective_winners:
            penalty_NxS = self.section.missing_eos_penalty * (~hit_eos_NxS)
            choices = [
                (i, scores_NxSxK[i, :, k] - penalty_NxS[i], w_NxK[i, k])
                for i in range(len(prompts))
                for k in range(len(self.objectives))
                if w_NxK[i, k] > 0
            ]
        else:
            choices = [(i, scalar_NxS[i], 1.0) for i in range(len(prompts))]
        for i, score_S, pair_weight in choices:
            best, worst = int(np.argmax(score_S)), int(np.argmin(score_S))
            chosen, rejected = texts[i * s + best], texts[i * s + worst]
            if chosen == rejected or score_S[best] == score_S[worst]:
                identical += 1  # nothing to learn from this prompt this step
                continue
            record = {"prompt": prompts[i], **shown[i], "chosen": chosen, "rejected": rejected}
            example = self.pairs(raw_record(record, i))
            if isinstance(example, Skipped):
                identical += 1
                continue
            self.builder.add(example)
            pair_weights.append(pair_weight)
            kept += 1
        self.last_metrics = {
            "online/pairs": float(kept),
            "online/prompts_without_pair": float(identical),
            "online/missing_eos": float(np.mean(~hit_eos_NxS)),
            "online/response_chars": float(np.mean([len(t) for t in texts])),
            "online/scalarised_score": float(np.mean(scalar_NxS)),
            **{
                f"online/score/{name}": float(np.mean(scores_NxSxK[..., k]))
                for k, name in enumerate(self.objectives)
            },
        }
        if not kept:
            return None
        batch = self.builder.build()
        if not self.section.per_objective_winners:
            return batch
        # Pairs fill the batch's slots in the order they were added.
        weight_P = np.zeros(batch.num_pairs, np.float32)
        weight_P[np.flatnonzero(batch.pair_valid_P)] = pair_weights
        return dataclasses.replace(batch, pair_weight_P=weight_P)
