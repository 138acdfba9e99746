"""Preference pairs (`data.record_type: preference`), TRL's format: prompt, chosen, rejected.

The prompt may be implicit (conversational chosen / rejected sharing their first messages).
SparsePO given weights ride along per response: `{chosen,rejected}_token_weights` (one
float per response token) or `{chosen,rejected}_weight_spans` (`[start_char, end_char,
weight]` on the response text). `loss.reward.margin_field` names a per-pair margin (TRL
RewardTrainer's `margin` column).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from alignjax.data.batching import (
    SequenceLayout,
    sequence_builder,
    sequence_lengths,
    sequence_prompt_lengths,
)
from alignjax.data.formats import (
    Conditioning,
    ResponseWeights,
    Text,
    align_forms,
    check_completion,
    is_weight,
    text_field,
)
from alignjax.data.record_types.registry import RecordType
from alignjax.data.records import BadRecord, RawRecord
from alignjax.data.tokenize import TokenizedSequence


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
    prompt: Text
    chosen: Text
    rejected: Text
    cond: Conditioning
    chosen_weights: ResponseWeights | None = None
    rejected_weights: ResponseWeights | None = None
    margin: float | None = None  # loss.reward.margin_field's value


@dataclasses.dataclass(frozen=True)
class PairExample:
    chosen: TokenizedSequence
    rejected: TokenizedSequence
    user_index: int
    condition_id: int
    epoch: int
    record_key: int = 0  # RawRecord.key: looks up precomputed reference log-probs
    margin: float = 0.0  # loss.reward.margin_field (reward models)

    @property
    def sequences(self) -> tuple[TokenizedSequence, ...]:
        return (self.chosen, self.rejected)


@dataclasses.dataclass(frozen=True)
class PairBatch:
    """Preference pairs.

    Padded: B = 2P rows, rows [0, P) chosen and [P, 2P) rejected (pair i is
    rows i and P + i), S = 1. Packed: each row holds whole pairs, chosen then
    rejected as consecutive segments. Either way the segment -> pair map below
    gives per-sequence sums (`ops.pair_sums`).

    `record_key_P` (host only): the record each pair came from (`records.record_key`:
    source index and row), the same whatever the shuffle, epoch, process or worker;
    0 for padding. int64, which JAX without x64 would truncate, so the trainer drops
    it before the batch goes to the devices. `ref_*_logps_P`: precomputed reference
    log-probs (`loss.reference: precomputed`), looked up by record key on the host by
    the trainer; None otherwise.
    """

    tokens_BxL: np.ndarray  # int32
    positions_BxL: np.ndarray  # int32
    segment_ids_BxL: np.ndarray  # int32
    loss_mask_BxL: np.ndarray  # int32
    segment_pair_index_BxS: np.ndarray  # int32, pair of segment s+1 (0 for unused)
    segment_is_chosen_BxS: np.ndarray  # int32, 1 chosen / 0 rejected
    pair_valid_P: np.ndarray  # int32
    user_index_P: np.ndarray  # int32, P-DPO user (0 = generic / unseen)
    condition_id_P: np.ndarray  # int32, data.condition_field index (0 = none)
    record_key_P: np.ndarray | None = None  # int64, host only (see above)
    user_slot_mask_BxL: np.ndarray | None = None  # int32, when n_user_tokens > 0
    token_weights_BxL: np.ndarray | None = None  # float32, when loss.sparsepo.weights: given
    ref_chosen_logps_P: np.ndarray | None = None  # float32, summed over the response
    ref_rejected_logps_P: np.ndarray | None = None  # float32
    # Per-pair loss weights (MO-ODPO's one-winner-per-objective pairs carry w_k); None = 1.
    pair_weight_P: np.ndarray | None = None  # float32
    # Per-pair margins (loss.reward.margin_field, reward models); None without the field.
    margin_P: np.ndarray | None = None  # float32

    @property
    def num_pairs(self) -> int:
        return self.pair_valid_P.shape[0]

    @property
    def rows_in_halves(self) -> bool:
        """Whether row i's partner is row B/2 + i (padded pairs), so a multi-host batch
        must keep the halves apart when it joins the processes' rows."""
        return self.tokens_BxL.shape[0] == 2 * self.num_pairs


def parse(row: dict, cond: Conditioning, cfg) -> PreferenceExample:
    chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
    if row.get("prompt") is None:
        prompt, chosen, rejected = _implicit_prompt(chosen, rejected)
    else:
        prompt = text_field(row, "prompt", allow_empty=True)
    prompt, chosen = align_forms(prompt, chosen)
    prompt, rejected = align_forms(prompt, rejected)
    check_completion(chosen, "chosen")
    check_completion(rejected, "rejected")
    if chosen == rejected:
        raise BadRecord("identical_responses", "chosen == rejected")
    chosen_weights = _response_weights(row, "chosen", chosen)
    rejected_weights = _response_weights(row, "rejected", rejected)
    margin = None if cfg.margin_field is None else _margin(row, cfg.margin_field)
    return PreferenceExample(prompt, chosen, rejected, cond, chosen_weights, rejected_weights, margin)


def _implicit_prompt(chosen: Text, rejected: Text):
    """TRL's implicit prompt: the longest common prefix of the two conversations, or of the two
    texts (as in Anthropic/hh-rlhf), where a space before the first difference stays with the
    responses."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _implicit_text_prompt(chosen, rejected)
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise BadRecord(
            "missing_field",
            "field 'prompt' is missing; an implicit prompt needs chosen/rejected of one form",
        )
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise BadRecord("bad_conversation", "no 'prompt' and chosen/rejected share no first message")
    if n == len(chosen) or n == len(rejected):
        raise BadRecord(
            "identical_responses" if len(chosen) == len(rejected) else "empty_response",
            "after the common prompt, chosen or rejected has no messages left",
        )
    return chosen[:n], chosen[n:], rejected[n:]


def _implicit_text_prompt(chosen: str, rejected: str):
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) or n == len(rejected):
        raise BadRecord(
            "identical_responses" if len(chosen) == len(rejected) else "empty_response",
            "after the common prompt, chosen or rejected has no text left",
        )
    if n > 0 and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _margin(row: dict, field: str) -> float:
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRecord(
            "bad_margin", f"{field} must be a finite number (loss.reward.margin_field), got {value!r}"
        )
    return float(value)


def _response_weights(row: dict, key: str, completion: Text) -> ResponseWeights | None:
    tw, spans = row.get(f"{key}_token_weights"), row.get(f"{key}_weight_spans")
    if tw is None and spans is None:
        return None
    if tw is not None and spans is not None:
        raise BadRecord("bad_token_weights", f"give {key}_token_weights or {key}_weight_spans, not both")
    if tw is not None:
        if not isinstance(tw, list) or not all(is_weight(w) for w in tw):
            raise BadRecord("bad_token_weights", f"{key}_token_weights must be a list of numbers >= 0")
        return ResponseWeights(token_weights=tuple(float(w) for w in tw))
    if isinstance(completion, list) and len(completion) != 1:
        raise BadRecord("bad_token_weights", f"{key}_weight_spans need a single-message {key}")
    text = completion if isinstance(completion, str) else completion[0]["content"]
    out = []
    for s in spans if isinstance(spans, list) else [None]:
        if isinstance(s, dict):
            s = [s.get("start"), s.get("end"), s.get("weight")]
        ok = (
            isinstance(s, list)
            and len(s) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) for x in s[:2])
            and is_weight(s[2])
        )
        if not ok or not 0 <= s[0] < s[1] <= len(text):
            raise BadRecord(
                "bad_token_weights",
                f"{key}_weight_spans entry {s!r} must be [start, end, weight] with "
                f"0 <= start < end <= {len(text)} (characters of the {key} text)",
            )
        out.append((s[0], s[1], float(s[2])))
    return ResponseWeights(spans=tuple(out))


def tokenize(processor, ex: PreferenceExample, raw: RawRecord) -> PairExample:
    prompt = processor.condition(ex.prompt, ex.cond)
    p_c, n_bos, chosen, w_c = processor.response(prompt, ex.chosen, ex.chosen_weights)
    p_r, _, rejected, w_r = processor.response(prompt, ex.rejected, ex.rejected_weights)
    if not np.array_equal(p_c, p_r):
        raise BadRecord(
            "template_error",
            "the chat template renders the prompt differently before chosen and rejected",
        )
    chosen_seq = processor.seq.sequence(p_c, n_bos, chosen, w_c)
    rejected_seq = processor.seq.sequence(p_c, n_bos, rejected, w_r)
    if np.array_equal(chosen_seq.response_ids, rejected_seq.response_ids):
        raise BadRecord(
            "identical_after_truncation",
            f"chosen and rejected agree on their first {len(chosen_seq.response_ids)} tokens, "
            "all that max_length keeps",
        )
    margin = ex.margin if ex.margin is not None else 0.0
    return PairExample(chosen_seq, rejected_seq, *processor.ids(ex.cond), raw.epoch, raw.key, margin)


def make_builder(cfg, per_host_batch_size: int, pad_id: int):
    assemble = functools.partial(
        _assemble,
        with_slots=cfg.n_user_tokens > 0,
        token_weight_default=cfg.default_token_weight if cfg.token_weights else None,
        with_margins=cfg.margin_field is not None,
    )
    return sequence_builder(cfg, per_host_batch_size, pad_id, 2, assemble)


def _assemble(
    layout: SequenceLayout, examples: list, *, with_slots, token_weight_default, with_margins
) -> PairBatch:
    n_ex = layout.example_valid_E.shape[0]
    user = np.zeros(n_ex, np.int32)
    cond = np.zeros(n_ex, np.int32)
    keys = np.zeros(n_ex, np.int64)
    margins = np.zeros(n_ex, np.float32)
    for i, ex in enumerate(examples):
        user[i], cond[i] = ex.user_index, ex.condition_id
        keys[i], margins[i] = ex.record_key, ex.margin
    laid = layout.rows
    weights = None
    if token_weight_default is not None:
        weights = np.where(
            np.isnan(laid.token_weights_BxL), token_weight_default, laid.token_weights_BxL
        ).astype(np.float32)
    return PairBatch(
        tokens_BxL=laid.tokens_BxL,
        positions_BxL=laid.positions_BxL,
        segment_ids_BxL=laid.segment_ids_BxL,
        loss_mask_BxL=laid.loss_mask_BxL,
        segment_pair_index_BxS=layout.segment_example_BxS,
        segment_is_chosen_BxS=(layout.segment_view_BxS == 0).astype(np.int32),
        pair_valid_P=layout.example_valid_E,
        user_index_P=user,
        condition_id_P=cond,
        record_key_P=keys,
        user_slot_mask_BxL=laid.user_slot_mask_BxL if with_slots else None,
        token_weights_BxL=weights,
        margin_P=margins if with_margins else None,
    )


def example_of(cfg, sequences: tuple) -> PairExample:
    chosen, rejected = sequences
    return PairExample(chosen, rejected, user_index=0, condition_id=0, epoch=0)


RECORD_TYPE = RecordType(
    name="preference",
    parse=parse,
    tokenize=tokenize,
    make_builder=make_builder,
    row_lengths=sequence_lengths,
    prompt_lengths=sequence_prompt_lengths,
    example_of=example_of,
    slots=2,
    packs=2,
)
