"""Prompt records -> the token ids a trained model saw at training time.

A record is what a prompt-only data file holds: `prompt` plus any of `system`,
`user_info`, `weights`, `user_id`. It goes through the data pipeline's own
per-record map (`ExampleProcessor`, record_type "prompt"), so generation and
evaluation render templates, chat template, BOS and P-DPO user slots exactly as
training did. The templates come from the run's config (`alignjax.train.run_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from alignjax.data.config import DataConfig
from alignjax.data.examples import ExampleProcessor
from alignjax.data.record_types.prompt import PromptTokenized
from alignjax.data.records import Origin, RawRecord, Skipped
from alignjax.data.vocab import Vocab


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
