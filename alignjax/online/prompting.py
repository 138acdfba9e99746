"""Prompt records -> the token ids a trained model saw at training time.

A record is what a prompt-only data file holds: `prompt` plus any of `system`,
`user_info`, `weights`, `user_id`. It goes through the data pipeline's own
per-record map (`ExampleProcessor`, record_type "prompt"), so generation and
evaluation render templates, chat template, BOS and P-DPO user slots exactly as
training did. The templates come from the run's config; `run_data_config` finds it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from alignjax import paths
from alignjax.data.config import DataConfig
from alignjax.data.examples import ExampleProcessor, PromptTokenized
from alignjax.data.records import Origin, RawRecord, Skipped
from alignjax.data.vocab import Vocab

RUN_CONFIG_NAME = "config.yaml"  # where a run directory keeps its resolved config


def find_run_config(run_dir: str | None) -> str | None:
    if run_dir is None:
        return None
    path = paths.join(run_dir, RUN_CONFIG_NAME)
    return path if paths.exists(path) else None


def run_data_config(config_path: str | None, stage: str | None) -> DataConfig:
    """The `data:` settings of one stage of a training config (the last stage if `stage`
    is None or unknown), or the defaults, with a warning, when there is no config."""
    if config_path is None:
        print(
            "warning: no run config found; prompts are rendered with the default data.templates. "
            "Pass --config RUN_CONFIG.yaml (the one the model was trained with) to render them "
            "as training did.",
            file=sys.stderr,
        )
        return DataConfig(record_type="prompt")
    from alignjax.train.config import data_config, load_config, stages

    all_stages = stages(load_config(config_path))
    chosen = next((s for s in all_stages if s.name == stage), all_stages[-1])
    return data_config(chosen.config.data, [], batch_size=1, record_type="prompt")


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    ids: np.ndarray  # int32 [Lp]: BOS, P-DPO user slots, conditioned prompt, generation prompt
    n_bos: int
    n_user_slots: int
    user_index: int  # P-DPO user index (0: generic or unseen)


class PromptRenderer:
    def __init__(self, data_cfg: DataConfig, tokenizer, user_vocab: Vocab | None = None):
        self.data_cfg = dataclasses.replace(data_cfg, record_type="prompt", on_bad_record="error")
        self.tokenizer = tokenizer
        self._processor = ExampleProcessor(self.data_cfg, tokenizer, user_vocab)

    @property
    def user_vocab(self) -> Vocab | None:
        return self._processor.user_vocab

    @property
    def has_chat_template(self) -> bool:
        """Whether conversational records can be rendered: data.chat_template, else the tokenizer's."""
        return bool(self._processor.seq.chat_template)

    def render(self, record: dict[str, Any], where: str = "--prompt", index: int = 0) -> RenderedPrompt:
        """`where` (a file, a flag) and the record's 0-based `index` there name it in errors."""
        origin = Origin(where, index, "row")
        out = self._processor(RawRecord(origin, record))
        if isinstance(out, Skipped):
            raise ValueError(
                f"{origin}: the prompt does not fit data.max_length={self.data_cfg.max_length} "
                f"({out.reason}); set data.max_prompt_length in the run config"
            )
        assert isinstance(out, PromptTokenized)
        seq = self._processor.seq
        return RenderedPrompt(out.prompt_ids, out.n_bos, seq.n_user_tokens, out.user_index)


def run_user_vocab(config_path: str | None, stage: str | None, run_dir: str | None) -> Vocab | None:
    """The P-DPO user-id vocabulary a run trained with: `data.user_vocab_path` if it was
    saved, else rebuilt as the trainer builds it (sorted user ids of the stage's train
    data). None when the config reserves no user slots."""
    if config_path is None:
        return None
    from alignjax.data.formats import decode
    from alignjax.data.sources import open_sources
    from alignjax.train.config import load_config, sources_from, stages

    all_stages = stages(load_config(config_path))
    data = next((s for s in all_stages if s.name == stage), all_stages[-1]).config.data
    if data.n_user_tokens == 0:
        return None
    if data.user_vocab_path and paths.exists(data.user_vocab_path):
        return Vocab.load(data.user_vocab_path)
    train = data.train if isinstance(data.train, list) else [data.train]
    # `builtin:NAME` is the trainer's name for <run_dir>/data/NAME.jsonl.
    train = [
        paths.join(run_dir or ".", "data", p.split(":", 1)[1] + ".jsonl")
        if isinstance(p, str) and p.startswith("builtin:")
        else p
        for p in train
    ]
    keys = set()
    for i, source_cfg in enumerate(sources_from(train, "data.train")):
        for source in open_sources(source_cfg, f"data.train[{i}]"):
            for j in range(len(source)):
                user = decode(source[j]).get("user_id")
                if isinstance(user, (str, int)) and not isinstance(user, bool):
                    keys.add(str(user))
    return Vocab(keys, "user_id")
