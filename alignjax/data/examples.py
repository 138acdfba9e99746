"""One record -> one tokenized example (or a `Skipped` that says why), for any record type.

This is the per-record Grain map: decode, validate, condition, render, tokenize,
truncate. The record type of `data.record_type` (`record_types/`) validates its fields
and tokenises its example with the shared steps below. Under `on_bad_record: error` a
bad record raises `DataError` naming its file and line; under `skip` it becomes a
`Skipped` for the batcher to count. Length drops are always counted, never raised. A
`DataSetupError` (a missing package, a template that does not compile) stops the run in
either mode.
"""

from __future__ import annotations

import numpy as np

from alignjax.data.config import DataConfig
from alignjax.data.formats import Conditioning, ResponseWeights, Text, conditioning, decode
from alignjax.data.record_types import record_type_named
from alignjax.data.records import (
    LENGTH_DROP_REASONS,
    BadRecord,
    DataSetupError,
    RawRecord,
    Skipped,
    bad_record_error,
)
from alignjax.data.templates import condition_prompt
from alignjax.data.tokenize import SequenceTokenizer, response_content
from alignjax.data.vocab import Vocab


class ExampleProcessor:
    """Picklable callable: `RawRecord -> example | Skipped` (the Grain map)."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer,
        user_vocab: Vocab | None = None,
        condition_vocab: Vocab | None = None,
    ):
        self.cfg = cfg
        self.record_type = record_type_named(cfg.record_type)
        self.seq = SequenceTokenizer(
            tokenizer,
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
            truncation_mode=cfg.truncation_mode,
            drop_over_length=cfg.drops_over_length,
            n_user_tokens=cfg.n_user_tokens,
            user_slot_token_id=cfg.user_slot_token_id,
            default_token_weight=cfg.default_token_weight,
            chat_template=cfg.chat_template,
        )
        self.user_vocab = user_vocab
        self.condition_vocab = condition_vocab

    def __call__(self, raw: RawRecord):
        try:
            row = decode(raw)
            example = self.record_type.parse(row, conditioning(row, self.cfg.condition_field), self.cfg)
            return self.record_type.tokenize(self, example, raw)
        except BadRecord as e:
            if self.cfg.on_bad_record == "error" and e.reason not in LENGTH_DROP_REASONS:
                raise bad_record_error(raw.origin, e) from None
            return Skipped(e.reason, str(raw.origin), raw.epoch)
        except DataSetupError as e:
            raise DataSetupError(f"{e} (met first at {raw.origin})") from e.__cause__

    # The shared steps record types tokenise with.

    def ids(self, cond: Conditioning) -> tuple[int, int]:
        """(user index, condition id) of a record's conditioning (0: none or unseen)."""
        user = self.user_vocab.index(cond.user_key) if self.user_vocab else 0
        condition = self.condition_vocab.index(cond.condition_key) if self.condition_vocab else 0
        return user, condition

    def condition(self, prompt: Text, cond: Conditioning, judgment: str | None = None) -> Text:
        """The prompt with its conditioning (and a CUT judgment) rendered in (`data.templates`)."""
        return condition_prompt(prompt, cond, self.cfg.templates, judgment=judgment)

    def prompt_ids(self, prompt: Text) -> tuple[np.ndarray, int]:
        """(ids, n_bos) of a prompt alone, truncated; raises if it leaves no room for a response."""
        prompt_text, _ = self.seq.render(prompt, None)
        ids, n_bos = self.seq.encode_prompt(prompt_text, chat=not isinstance(prompt, str))
        ids = self.seq.truncate_prompt(ids, n_bos)
        self.seq.sequence(ids, n_bos, ids[:0])  # raises response_truncated if no room is left
        return ids, n_bos

    def response(self, prompt: Text, response: Text, weights: ResponseWeights | None = None):
        """(prompt_ids, n_bos, response_ids, response_weights) for one response."""
        if isinstance(prompt, list) and isinstance(response, str):
            response = [{"role": "assistant", "content": response}]
        prompt_text, response_text = self.seq.render(prompt, response)
        prompt_ids, n_bos = self.seq.encode_prompt(prompt_text, chat=not isinstance(prompt, str))
        prompt_ids = self.seq.truncate_prompt(prompt_ids, n_bos)
        response_ids, response_weights = self.seq.encode_response(
            response_text, weights, response_content(response)
        )
        return prompt_ids, n_bos, response_ids, response_weights
