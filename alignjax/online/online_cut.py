"""Online CUT: the policy answers, a judge critiques, CUT learns from the judgments.

Each step samples one response per prompt from the current policy, asks the judge for a
judgment (None = satisfactory), and turns (prompt, response, judgment) into CUT's
Align-P / Align-N / Misalign views through the same tokenisation and batching as
offline CUT data (docs/methods.md, section 5, "Online mode").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from alignjax.data.examples import ExampleProcessor
from alignjax.data.record_types import make_builder
from alignjax.data.records import Skipped
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
from alignjax.rewards.judges import build_judge


@dataclasses.dataclass(frozen=True)
class OnlineSampling:
    """How the policy samples its answers online (CUT with a judge)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def rollout_plan(sampling: OnlineSampling) -> RolloutPlan:
    """One response per prompt."""
    return RolloutPlan(
        1,
        SamplingConfig(
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
        ),
    )


class OnlineCutSource(OnlineSource):
    """Iterator-like: `next_for(params, step)` -> a CutBatch of judged fresh responses."""

    def __init__(
        self,
        prompt_pipeline,
        cut_cfg,
        tokenizer,
        model_cfg,
        judge: dict[str, Any],
        sampling: OnlineSampling,
        seed: int,
        per_host_batch: int,
        pad_id: int,
        generation_config: dict[str, Any] | None = None,  # generation_config.json: more stop ids
        mesh=None,  # the run's mesh, where sampling runs (None: the parameters' own)
    ):
        super().__init__(prompt_pipeline)
        self.judge = build_judge(judge)
        cut_cfg = dataclasses.replace(cut_cfg, record_type="cut", on_bad_record="skip")
        self.examples = ExampleProcessor(cut_cfg, tokenizer)
        self.builder = make_builder(cut_cfg, per_host_batch, pad_id)
        settings = dataclasses.replace(
            rollout_plan(sampling).sampling,
            eos_ids=stop_ids(tokenizer, model_cfg, generation_config),
            pad_id=pad_id,
        )
        self.roller = Roller(cut_cfg, tokenizer, model_cfg, settings, seed, mesh)

    def next_for(self, params, step: int):
        prompts = batch_prompts(next(self.prompt_pipeline))
        rollout = self.roller.sample(params, [{"prompt": p} for p in prompts], 1, step)
        judgments = self.judge([plain_prompt_text(p) for p in prompts], rollout.texts)
        if len(judgments) != len(prompts):
            raise ValueError(f"the judge returned {len(judgments)} judgments for {len(prompts)} responses")
        self.builder.reset()
        skipped = 0
        for i, (prompt, text, judgment) in enumerate(zip(prompts, rollout.texts, judgments)):
            example = self.examples(raw_record({"prompt": prompt, "response": text, "judgment": judgment}, i))
            if isinstance(example, Skipped):
                skipped += 1  # e.g. an empty response: no tokens to learn from
                continue
            self.builder.add(example)
        if self.builder.empty:
            raise RuntimeError(f"online CUT step {step}: no usable response; check the prompts and sampling")
        self.last_metrics = {
            "online/judged_negative": float(np.mean([j is not None for j in judgments])),
            "online/unusable_responses": float(skipped),
            "online/missing_eos": float(np.mean(~rollout.hit_eos)),
            "online/response_chars": float(np.mean([len(t) for t in rollout.texts])),
        }
        return self.builder.build()
