"""One rollout step shared by the online methods: render prompts, sample, decode.

Prompts are rendered by the data pipeline's own per-record step, so online pairs and
judgments see exactly the prompt ids offline training would build; sampling keys are a
function of (seed, draw, process), so a resumed run samples what the uninterrupted one did.
Every process samples at once, in one program over the run's mesh: each process's prompts
are its rows of the global batch, and it reads back and decodes only those rows.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.data.examples import ExampleProcessor
from alignjax.data.records import Origin, RawRecord, Skipped
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.generation.sampler import params_mesh, sample_rows
from alignjax.generation.stop_ids import response_text


def raw_record(value: dict, index: int) -> RawRecord:
    return RawRecord(Origin("<online>", index, "row"), value)


def plain_prompt_text(prompt: Any) -> str:
    """What reward functions and judges see: the user's request without any conditioning."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def batch_prompts(prompt_batch) -> list[Any]:
    """The valid records' prompts (str or messages) of a PromptBatch."""
    return [json.loads(p) for p, valid in zip(prompt_batch.prompts, prompt_batch.example_valid_B) if valid]


@dataclasses.dataclass(frozen=True)
class RolloutPlan:
    """How an online source samples: `num_samples` rows per prompt, decoded with `sampling`
    (whose stop and pad ids the tokenizer fills in)."""

    num_samples: int
    sampling: SamplingConfig


@dataclasses.dataclass
class Rollout:
    """num_samples responses per prompt, flattened prompt-major."""

    texts: list[str]
    hit_eos: np.ndarray  # [N * num_samples] bool


class Roller:
    """`mesh`: the run's mesh (None: the one the sampled parameters lie on)."""

    def __init__(self, data_cfg, tokenizer, model_cfg, sampling, seed: int, mesh=None):
        self.renderer = ExampleProcessor(
            dataclasses.replace(data_cfg, record_type="prompt", on_bad_record="skip"), tokenizer
        )
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.sampling = sampling
        self.seed = seed
        self.mesh = mesh

    def prompt_ids(self, records: list[dict]) -> list[list[int]]:
        out = []
        for i, record in enumerate(records):
            example = self.renderer(raw_record(record, i))
            if isinstance(example, Skipped):
                raise ValueError(f"online prompt {i} cannot be rendered ({example.reason}): {record}")
            out.append(example.prompt_ids.tolist())
        return out

    def sample(self, params, records: list[dict], num_samples: int, draw: int) -> Rollout:
        ids = [p for p in self.prompt_ids(records) for _ in range(num_samples)]
        count = jax.process_count()
        base = jax.random.key(self.seed)
        keys_P = jnp.stack([jax.random.fold_in(base, draw * count + q) for q in range(count)])
        mesh = self.mesh if self.mesh is not None else params_mesh(params)
        samples = sample_rows(params, self.model_cfg, self.sampling, mesh, ids, keys_P)
        # Every stop id the sampler stops at (generation config, config.json, tokenizer).
        stops = set(self.sampling.eos_ids)
        hit_eos = np.array([bool(t) and t[-1] in stops for t in samples])
        # Rewards and judges score the text transformers would return: an ordinary stop token
        # (a generation config's ".") stays in it, special ones do not.
        texts = [response_text(self.tokenizer, s) for s in samples]
        return Rollout(texts, hit_eos)


class OnlineSource:
    """What the trainer needs of an online batch source besides `next_for(params, step)`:
    the prompt pipeline's state (saved with checkpoints) and its metrics plus the last step's."""

    condition_vocab = None
    user_vocab = None

    def __init__(self, prompt_pipeline):
        self.prompt_pipeline = prompt_pipeline
        self.last_metrics: dict[str, float] = {}

    def metrics(self) -> dict[str, float]:
        return {**self.prompt_pipeline.metrics(), **self.last_metrics}

    def get_state(self) -> dict:
        return self.prompt_pipeline.get_state()

    def resume_from(self, states: list[dict]) -> None:
        self.prompt_pipeline.resume_from(states)

    def close(self) -> None:
        self.prompt_pipeline.close()
