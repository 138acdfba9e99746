"""What every record type reads alike: decoding, text fields, conditioning (TRL's vocabulary).

Text is either plain (`str`) or conversational (a list of `{role, content}`
messages). A plain prompt with conversational responses is wrapped as one user
message (and a plain response under a conversational prompt as one assistant
message), so the two forms can be mixed without ambiguity.

Each record type (`record_types/`) validates its own fields with these helpers. The
conditioning fields any record may carry, beyond TRL's: `system`, `user_info`
(MetaAlign), `weights` (MO-ODPO), `user_id` (P-DPO), and the field that
`data.condition_field` names.
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


def text_field(row: dict, key: str, allow_empty: bool = False) -> Text:
    """`row[key]` as plain text or validated messages; empty only if `allow_empty`."""
    if key not in row or row[key] is None:
        raise BadRecord("missing_field", f"field {key!r} is missing")
    value = row[key]
    if isinstance(value, str):
        if not value and not allow_empty:
            raise BadRecord("empty_response", f"field {key!r} is an empty string")
        return value
    if isinstance(value, list):
        msgs = messages(value, key)
        if not msgs and not allow_empty:
            raise BadRecord("empty_response", f"field {key!r} is an empty conversation")
        return msgs
    raise BadRecord(
        "wrong_type",
        f"field {key!r} must be a string or a list of messages, got {type(value).__name__}",
    )


def messages(value: Any, key: str) -> list:
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


def align_forms(prompt: Text, completion: Text):
    """(prompt, completion) in one form: a plain side becomes one message when the other is a list."""
    if isinstance(prompt, str) and isinstance(completion, list):
        return ([{"role": "user", "content": prompt}] if prompt else []), completion
    if isinstance(prompt, list) and isinstance(completion, str):
        return prompt, [{"role": "assistant", "content": completion}]
    return prompt, completion


def check_completion(completion: Text, key: str) -> None:
    """A conversational response holds only assistant messages, and some text."""
    if isinstance(completion, list):
        for i, m in enumerate(completion):
            if m["role"] != "assistant":
                raise BadRecord(
                    "bad_conversation",
                    f"{key}[{i}] has role {m['role']!r}; a response holds only assistant messages",
                )
        if not "".join(m["content"] for m in completion):
            raise BadRecord("empty_response", f"{key} has only empty assistant messages")


def conditioning(row: dict, condition_field: str | None) -> Conditioning:
    """The record's conditioning fields, validated (every record type reads them)."""
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


def is_weight(w) -> bool:
    """A finite number >= 0 (a given token weight)."""
    return isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
