"""One record -> one tokenized example (or a `Skipped` that says why), for each record type.

This is the per-record Grain map: decode, validate, condition, render, tokenize,
truncate. Under `on_bad_record: error` a bad record raises `DataError` naming
its file and line; under `skip` it becomes a `Skipped` for the batcher to
count. Length drops are always counted, never raised. A `DataSetupError` (a missing
package, a template that does not compile) stops the run in either mode.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from alignjax.data.config import DataConfig
from alignjax.data.formats import (
    Conditioning,
    CutExample,
    PreferenceExample,
    PromptExample,
    SftExample,
    UnpairedExample,
    decode,
    parse,
)
from alignjax.data.records import (
    LENGTH_DROP_REASONS,
    BadRecord,
    DataSetupError,
    RawRecord,
    Skipped,
    bad_record_error,
)
from alignjax.data.templates import condition_prompt
from alignjax.data.tokenize import SequenceTokenizer, TokenizedSequence, response_content
from alignjax.data.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class PairExample:
    chosen: TokenizedSequence
    rejected: TokenizedSequence
    user_index: int
    condition_id: int
    epoch: int
    record_key: int = 0  # RawRecord.key: looks up precomputed reference log-probs
    margin: float = 0.0  # data.margin_field (reward models)

    @property
    def sequences(self) -> tuple[TokenizedSequence, ...]:
        return (self.chosen, self.rejected)


@dataclasses.dataclass(frozen=True)
class SftTokenized:
    sequence: TokenizedSequence
    user_index: int
    condition_id: int
    epoch: int

    @property
    def sequences(self) -> tuple[TokenizedSequence, ...]:
        return (self.sequence,)


@dataclasses.dataclass(frozen=True)
class CutTokenized:
    """Align-P (satisfactory) or Align-N (`judged`), and the Misalign view."""

    judged: TokenizedSequence
    misaligned: TokenizedSequence | None  # None when satisfactory
    score: float  # NaN when absent
    condition_id: int
    epoch: int


@dataclasses.dataclass(frozen=True)
class UnpairedTokenized:
    """A KTO example: its sequence, and its completion as another prompt would take it."""

    sequence: TokenizedSequence
    # The completion cut only where any prompt would cut it (max_length - 1): the batcher
    # puts it after another example's prompt for the KL pairs, and cuts it to that budget.
    completion_ids: np.ndarray
    desirable: bool
    condition_id: int
    epoch: int

    @property
    def sequences(self) -> tuple[TokenizedSequence, ...]:
        return (self.sequence,)


@dataclasses.dataclass(frozen=True)
class PromptTokenized:
    prompt_ids: np.ndarray  # conditioned (weights, system, user info), BOS + slots
    n_bos: int  # 0 or 1: whether prompt_ids starts with BOS (the user slots follow it)
    unconditioned_ids: np.ndarray  # without the MO-ODPO weight sentence
    objective_weights: np.ndarray  # float32 [K], data.templates.weights order
    prompt: str  # the record's prompt as JSON, for re-conditioning online
    user_index: int
    condition_id: int
    epoch: int


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
        self.seq = SequenceTokenizer(
            tokenizer,
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
            truncation_mode=cfg.truncation_mode,
            n_user_tokens=cfg.n_user_tokens,
            user_slot_token_id=cfg.user_slot_token_id,
            default_token_weight=cfg.default_token_weight,
            chat_template=cfg.chat_template,
        )
        self.user_vocab = user_vocab
        self.condition_vocab = condition_vocab

    def __call__(self, raw: RawRecord):
        try:
            example = parse(
                decode(raw),
                self.cfg.record_type,
                condition_field=self.cfg.condition_field,
                margin_field=self.cfg.margin_field,
            )
            return self._tokenize(example, raw)
        except BadRecord as e:
            if self.cfg.on_bad_record == "error" and e.reason not in LENGTH_DROP_REASONS:
                raise bad_record_error(raw.origin, e) from None
            return Skipped(e.reason, str(raw.origin), raw.epoch)
        except DataSetupError as e:
            raise DataSetupError(f"{e} (met first at {raw.origin})") from e.__cause__

    def _ids(self, cond: Conditioning) -> tuple[int, int]:
        user = self.user_vocab.index(cond.user_key) if self.user_vocab else 0
        condition = self.condition_vocab.index(cond.condition_key) if self.condition_vocab else 0
        return user, condition

    def _tokenize(self, ex, raw: RawRecord):
        epoch = raw.epoch
        if isinstance(ex, PreferenceExample):
            return self._pair(ex, epoch, raw.key)
        if isinstance(ex, SftExample):
            return self._sft(ex, epoch)
        if isinstance(ex, CutExample):
            return self._cut(ex, epoch)
        if isinstance(ex, UnpairedExample):
            return self._unpaired(ex, epoch)
        return self._prompt(ex, epoch)

    def _prompt_ids(self, prompt) -> tuple[np.ndarray, int]:
        prompt_text, _ = self.seq.render(prompt, None)
        ids, n_bos = self.seq.encode_prompt(prompt_text, chat=not isinstance(prompt, str))
        ids = self.seq.truncate_prompt(ids, n_bos)
        self.seq.sequence(ids, n_bos, ids[:0])  # raises response_truncated if no room is left
        return ids, n_bos

    def _response(self, prompt, response, weights=None):
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

    def _pair(self, ex: PreferenceExample, epoch: int, key: int) -> PairExample:
        prompt = condition_prompt(ex.prompt, ex.cond, self.cfg.templates)
        p_c, n_bos, chosen, w_c = self._response(prompt, ex.chosen, ex.chosen_weights)
        p_r, _, rejected, w_r = self._response(prompt, ex.rejected, ex.rejected_weights)
        if not np.array_equal(p_c, p_r):
            raise BadRecord(
                "template_error",
                "the chat template renders the prompt differently before chosen and rejected",
            )
        chosen_seq = self.seq.sequence(p_c, n_bos, chosen, w_c)
        rejected_seq = self.seq.sequence(p_c, n_bos, rejected, w_r)
        if np.array_equal(chosen_seq.response_ids, rejected_seq.response_ids):
            raise BadRecord(
                "identical_after_truncation",
                f"chosen and rejected agree on their first {len(chosen_seq.response_ids)} tokens, "
                "all that max_length keeps",
            )
        margin = ex.margin if ex.margin is not None else 0.0
        return PairExample(chosen_seq, rejected_seq, *self._ids(ex.cond), epoch, key, margin)

    def _sft(self, ex: SftExample, epoch: int) -> SftTokenized:
        prompt = condition_prompt(ex.prompt, ex.cond, self.cfg.templates)
        p, n_bos, r, _ = self._response(prompt, ex.response)
        return SftTokenized(self.seq.sequence(p, n_bos, r), *self._ids(ex.cond), epoch)

    def _unpaired(self, ex: UnpairedExample, epoch: int) -> UnpairedTokenized:
        prompt = condition_prompt(ex.prompt, ex.cond, self.cfg.templates)
        p, n_bos, r, _ = self._response(prompt, ex.completion)
        sequence = self.seq.sequence(p, n_bos, r)
        completion_ids = r[: self.cfg.max_length - 1]
        return UnpairedTokenized(sequence, completion_ids, ex.label, self._ids(ex.cond)[1], epoch)

    def _cut(self, ex: CutExample, epoch: int) -> CutTokenized:
        score = np.nan if ex.score is None else ex.score
        threshold = self.cfg.cut_positive_score
        satisfactory = ex.judgment is None or (
            ex.score is not None and threshold is not None and ex.score >= threshold
        )
        _, condition_id = self._ids(ex.cond)
        plain = condition_prompt(ex.prompt, ex.cond, self.cfg.templates)
        p_m, n_bos, r_m, _ = self._response(plain, ex.response)
        if satisfactory:
            return CutTokenized(self.seq.sequence(p_m, n_bos, r_m), None, score, condition_id, epoch)
        judged = condition_prompt(ex.prompt, ex.cond, self.cfg.templates, judgment=ex.judgment)
        p_j, _, r_j, _ = self._response(judged, ex.response)
        # Same response tokens, cut to the same length, so the two views line up
        # token for token (the CUT ratio p(y_t|x,j) / p(y_t|x) needs that).
        budget = min(self.seq.response_budget(p_j), self.seq.response_budget(p_m))
        return CutTokenized(
            self.seq.sequence(p_j, n_bos, r_j, budget=budget),
            self.seq.sequence(p_m, n_bos, r_m, budget=budget),
            score,
            condition_id,
            epoch,
        )

    def _prompt(self, ex: PromptExample, epoch: int) -> PromptTokenized:
        objectives = self.cfg.templates.objectives
        conditioned_prompt = condition_prompt(ex.prompt, ex.cond, self.cfg.templates)
        plain_cond = dataclasses.replace(ex.cond, weights=None)
        plain_prompt = condition_prompt(ex.prompt, plain_cond, self.cfg.templates)
        if isinstance(conditioned_prompt, list) and isinstance(plain_prompt, str):
            # Same chat format as the conditioned prompt, just without the weights.
            plain_prompt = [{"role": "user", "content": plain_prompt}] if plain_prompt else []
        conditioned, n_bos = self._prompt_ids(conditioned_prompt)
        unconditioned, _ = self._prompt_ids(plain_prompt)
        weights = ex.cond.weights or {}
        return PromptTokenized(
            prompt_ids=conditioned,
            n_bos=n_bos,
            unconditioned_ids=unconditioned,
            objective_weights=np.asarray([weights.get(k, 0.0) for k in objectives], np.float32),
            prompt=json.dumps(ex.prompt, ensure_ascii=False),
            user_index=self._ids(ex.cond)[0],
            condition_id=self._ids(ex.cond)[1],
            epoch=epoch,
        )
