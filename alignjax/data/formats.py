"""Rows -> typed examples, in TRL's dataset vocabulary, with every check a user needs.

Text is either plain (`str`) or conversational (a list of `{role, content}`
messages). A plain prompt with conversational responses is wrapped as one user
message (and a plain response under a conversational prompt as one assistant
message), so the two forms can be mixed without ambiguity.

Fields beyond TRL's: `system`, `user_info` (MetaAlign), `weights` (MO-ODPO),
`user_id` (P-DPO), `judgment` / `score` (CUT), and SparsePO given weights
`{chosen,rejected}_token_weights` (one float per response token) or
`{chosen,rejected}_weight_spans` (`[start_char, end_char, weight]` on the
response text).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Union

from alignjax.data.records import BadRecord, RawRecord

Message = dict  # {"role": str, "content": str}
Text = Union[str, list]  # plain text or a list of messages


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """Preference conditioning that the templates put into the prompt."""

    system: str | None = None
    user_info: str | None = None
    weights: dict | None = None  # objective -> weight (MO-ODPO)
    user_key: str | None = None  # str(user_id) (P-DPO)
    condition_key: str | None = None  # canonical value of data.condition_field

    @property
    def any_text(self) -> bool:
        return bool(self.system or self.user_info or self.weights)


@dataclasses.dataclass(frozen=True)
class ResponseWeights:
    """Given per-token weights (SparsePO) for one response: a list or char spans."""

    token_weights: tuple | None = None
    spans: tuple | None = None  # ((start, end, weight), ...)


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
    prompt: Text
    chosen: Text
    rejected: Text
    cond: Conditioning
    chosen_weights: ResponseWeights | None = None
    rejected_weights: ResponseWeights | None = None
    margin: float | None = None  # data.margin_field's value


@dataclasses.dataclass(frozen=True)
class SftExample:
    prompt: Text
    response: Text
    cond: Conditioning


@dataclasses.dataclass(frozen=True)
class PromptExample:
    prompt: Text
    cond: Conditioning


@dataclasses.dataclass(frozen=True)
class UnpairedExample:
    """KTO's record: one completion, desirable (`label` true) or not."""

    prompt: Text
    completion: Text
    label: bool
    cond: Conditioning


@dataclasses.dataclass(frozen=True)
class CutExample:
    prompt: Text
    response: Text
    judgment: str | None  # None: satisfactory
    score: float | None
    cond: Conditioning


def decode(raw: RawRecord) -> dict:
    """Bytes (JSONL line, ArrayRecord record) or a dict -> a dict, or BadRecord."""
    value = raw.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRecord("not_utf8", f"byte {e.start} is not valid UTF-8 ({e.reason})") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadRecord("invalid_json", f"{e.msg} at column {e.colno}") from None
    if not isinstance(value, dict):
        raise BadRecord("not_an_object", f"got a JSON {type(value).__name__}, not an object")
    for k, v in value.items():
        if isinstance(v, bytes):  # TFDS text that was not UTF-8
            raise BadRecord("not_utf8", f"field {k!r} is not valid UTF-8")
    return value


def parse(
    row: dict, record_type: str, *, condition_field: str | None = None, margin_field: str | None = None
):
    """A decoded row -> the typed example for `record_type` (see config.RECORD_TYPES)."""
    cond = _conditioning(row, condition_field)
    if record_type == "preference":
        example = _preference(row, cond)
        if margin_field is not None:
            example = dataclasses.replace(example, margin=_margin(row, margin_field))
        return example
    if record_type == "sft":
        return _sft(row, cond)
    if record_type == "prompt":
        return PromptExample(_text(row, "prompt", allow_empty=True), cond)
    if record_type == "cut":
        return _cut(row, cond)
    if record_type == "unpaired":
        return _unpaired(row, cond)
    raise ValueError(record_type)


def _preference(row: dict, cond: Conditioning) -> PreferenceExample:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    if row.get("prompt") is None:
        prompt, chosen, rejected = _implicit_prompt(chosen, rejected)
    else:
        prompt = _text(row, "prompt", allow_empty=True)
    prompt, chosen = _align_forms(prompt, chosen)
    prompt, rejected = _align_forms(prompt, rejected)
    _check_completion(chosen, "chosen")
    _check_completion(rejected, "rejected")
    if chosen == rejected:
        raise BadRecord("identical_responses", "chosen == rejected")
    return PreferenceExample(
        prompt,
        chosen,
        rejected,
        cond,
        _response_weights(row, "chosen", chosen),
        _response_weights(row, "rejected", rejected),
    )


def _margin(row: dict, field: str) -> float:
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRecord("bad_margin", f"{field} must be a finite number (data.margin_field), got {value!r}")
    return float(value)


def _sft(row: dict, cond: Conditioning) -> SftExample:
    if row.get("messages") is not None:
        messages = _messages(row["messages"], "messages")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise BadRecord("bad_conversation", "messages has no assistant message")
        prompt, response = messages[:last], messages[last:]
    else:
        key = "response" if row.get("response") is not None else "completion"
        if row.get(key) is None:
            raise BadRecord("missing_field", "need 'messages', or 'prompt' with 'response' or 'completion'")
        prompt, response = _text(row, "prompt", allow_empty=True), _text(row, key)
        prompt, response = _align_forms(prompt, response)
    _check_completion(response, "response")
    return SftExample(prompt, response, cond)


def _cut(row: dict, cond: Conditioning) -> CutExample:
    prompt, response = _text(row, "prompt", allow_empty=True), _text(row, "response")
    prompt, response = _align_forms(prompt, response)
    _check_completion(response, "response")
    judgment = row.get("judgment")
    if judgment is not None and not isinstance(judgment, str):
        raise BadRecord("wrong_type", f"'judgment' must be a string or null, got {type(judgment).__name__}")
    score = row.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise BadRecord("wrong_type", f"'score' must be a number or null, got {type(score).__name__}")
    return CutExample(prompt, response, judgment or None, None if score is None else float(score), cond)


def _unpaired(row: dict, cond: Conditioning) -> UnpairedExample:
    prompt, completion = _text(row, "prompt", allow_empty=True), _text(row, "completion")
    prompt, completion = _align_forms(prompt, completion)
    _check_completion(completion, "completion")
    label = row.get("label")
    if not isinstance(label, bool):
        # 0/1 or "yes" would be guesses: TRL's unpaired datasets hold JSON booleans.
        raise BadRecord(
            "missing_field" if label is None else "wrong_type",
            f"'label' must be true (desirable) or false (undesirable), got {label!r}",
        )
    return UnpairedExample(prompt, completion, label, cond)


def _text(row: dict, key: str, allow_empty: bool = False) -> Text:
    if key not in row or row[key] is None:
        raise BadRecord("missing_field", f"field {key!r} is missing")
    value = row[key]
    if isinstance(value, str):
        if not value and not allow_empty:
            raise BadRecord("empty_response", f"field {key!r} is an empty string")
        return value
    if isinstance(value, list):
        msgs = _messages(value, key)
        if not msgs and not allow_empty:
            raise BadRecord("empty_response", f"field {key!r} is an empty conversation")
        return msgs
    raise BadRecord(
        "wrong_type",
        f"field {key!r} must be a string or a list of messages, got {type(value).__name__}",
    )


def _messages(value: Any, key: str) -> list:
    if not isinstance(value, list):
        raise BadRecord("wrong_type", f"field {key!r} must be a list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRecord("bad_conversation", f"{key}[{i}] is not a {{role, content}} message")
        if not isinstance(m.get("content"), str):
            raise BadRecord("bad_conversation", f"{key}[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _implicit_prompt(chosen: Text, rejected: Text):
    """TRL's implicit prompt: the longest common prefix of the two conversations."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise BadRecord(
            "missing_field",
            "field 'prompt' is missing; an implicit prompt needs conversational chosen/rejected",
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


def _align_forms(prompt: Text, completion: Text):
    if isinstance(prompt, str) and isinstance(completion, list):
        return ([{"role": "user", "content": prompt}] if prompt else []), completion
    if isinstance(prompt, list) and isinstance(completion, str):
        return prompt, [{"role": "assistant", "content": completion}]
    return prompt, completion


def _check_completion(completion: Text, key: str) -> None:
    if isinstance(completion, list):
        for i, m in enumerate(completion):
            if m["role"] != "assistant":
                raise BadRecord(
                    "bad_conversation",
                    f"{key}[{i}] has role {m['role']!r}; a response holds only assistant messages",
                )
        if not "".join(m["content"] for m in completion):
            raise BadRecord("empty_response", f"{key} has only empty assistant messages")


def _conditioning(row: dict, condition_field: str | None) -> Conditioning:
    def opt_str(key):
        v = row.get(key)
        if v is not None and not isinstance(v, str):
            raise BadRecord("wrong_type", f"field {key!r} must be a string, got {type(v).__name__}")
        return v or None

    weights = row.get("weights")
    if weights is not None:
        if not isinstance(weights, dict):
            raise BadRecord("bad_weights", "'weights' must be an object {objective: weight}")
        for k, v in weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise BadRecord("bad_weights", f"weights[{k!r}] = {v!r} is not a finite number >= 0")
    user = row.get("user_id")
    if user is not None and (isinstance(user, bool) or not isinstance(user, (str, int))):
        raise BadRecord("wrong_type", f"'user_id' must be a string or an integer, got {type(user).__name__}")
    return Conditioning(
        system=opt_str("system"),
        user_info=opt_str("user_info"),
        weights=weights or None,
        user_key=None if user is None else str(user),
        condition_key=condition_key(row, condition_field),
    )


def condition_key(row: dict, field: str | None) -> str | None:
    """The canonical string of `row[field]` (JSON, sorted keys), or None if absent."""
    if field is None or row.get(field) is None:
        return None
    value = row[field]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _response_weights(row: dict, key: str, completion: Text) -> ResponseWeights | None:
    tw, spans = row.get(f"{key}_token_weights"), row.get(f"{key}_weight_spans")
    if tw is None and spans is None:
        return None
    if tw is not None and spans is not None:
        raise BadRecord("bad_token_weights", f"give {key}_token_weights or {key}_weight_spans, not both")
    if tw is not None:
        if not isinstance(tw, list) or not all(_is_weight(w) for w in tw):
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
            and _is_weight(s[2])
        )
        if not ok or not 0 <= s[0] < s[1] <= len(text):
            raise BadRecord(
                "bad_token_weights",
                f"{key}_weight_spans entry {s!r} must be [start, end, weight] with "
                f"0 <= start < end <= {len(text)} (characters of the {key} text)",
            )
        out.append((s[0], s[1], float(s[2])))
    return ResponseWeights(spans=tuple(out))


def _is_weight(w) -> bool:
    return isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
