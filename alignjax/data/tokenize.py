"""Prompt + response -> token ids with exact boundaries, BOS/EOS once, and length limits.

Rules (what a row looks like, whatever the tokenizer and chat template):
- Conversational text is rendered with the chat template: the prompt with
  `add_generation_prompt=True`, the response as the rest of the full rendering
  (the prompt rendering must be a prefix of it). Prompt and response are
  encoded separately, so the prompt's tokens are exactly those the model sees
  at generation time and the boundary never falls inside a token.
- BOS exactly once: encoded with `add_special_tokens=False`; a BOS the template
  wrote is kept, a doubled one collapsed, a missing one added. No BOS if the
  tokenizer has none.
- EOS exactly once, at the end of the response: kept if the template wrote it
  (whitespace the template puts after it is dropped), appended otherwise.
- P-DPO: `n_user_tokens` placeholder slots right after BOS (at the start if
  there is no BOS); they are prompt tokens, never targets.
- Truncation: the prompt to `max_prompt_length` (keep_end: its end, keep_start:
  its start; BOS and user slots always stay), then the response to
  `max_length - len(prompt)` (its start). A response cut to nothing is dropped.
  With `drop_over_length`, nothing is cut: a sequence that either limit would cut
  drops its record (TRL's RewardTrainer's filter).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alignjax.data.formats import ResponseWeights, Text
from alignjax.data.records import BadRecord, DataSetupError


@dataclasses.dataclass(frozen=True)
class TokenizedSequence:
    """One sequence: `prompt_ids` (BOS, user slots, prompt) then `response_ids`."""

    prompt_ids: np.ndarray  # int32 [Lp]
    response_ids: np.ndarray  # int32 [Lr], ends with EOS unless truncated
    n_user_slots: int  # slots at prompt_ids[n_bos : n_bos + n_user_slots]
    n_bos: int  # 0 or 1
    response_weights: np.ndarray | None = None  # float32 [Lr]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def tokens(self) -> np.ndarray:
        return np.concatenate([self.prompt_ids, self.response_ids]).astype(np.int32)

    @property
    def loss_mask(self) -> np.ndarray:
        """1 on response tokens: token t is a target, predicted from position t-1."""
        return np.concatenate(
            [np.zeros(len(self.prompt_ids), np.int32), np.ones(len(self.response_ids), np.int32)]
        )

    @property
    def user_slot_mask(self) -> np.ndarray:
        mask = np.zeros(len(self), np.int32)
        mask[self.n_bos : self.n_bos + self.n_user_slots] = 1
        return mask


def adds_bos_on_encode(tokenizer) -> bool:
    """Whether `tokenizer(text)` puts BOS first (Llama's does; SmolLM2's and Qwen's do not,
    though SmolLM2's defines one). Asked of the tokenizer, not read from flags, since
    post-processors and `add_bos_token` both decide it."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


class SequenceTokenizer:
    """Turns rendered prompt/response pairs into `TokenizedSequence`s for one tokenizer."""

    def __init__(
        self,
        tokenizer,
        *,
        max_length: int,
        max_prompt_length: int | None,
        truncation_mode: str = "keep_end",
        drop_over_length: bool = False,
        n_user_tokens: int = 0,
        user_slot_token_id: int | None = None,
        default_token_weight: float = 1.0,
        chat_template: str | None = None,
    ):
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no eos_token; set one (tokenizer.eos_token = ...) so responses can end"
            )
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.bos_token_id
        self.adds_bos = adds_bos_on_encode(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncation_mode = truncation_mode
        self.drop_over_length = drop_over_length
        self.n_user_tokens = n_user_tokens
        if user_slot_token_id is None:
            user_slot_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.user_slot_token_id = user_slot_token_id
        self.default_token_weight = default_token_weight
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)

    # -- rendering ---------------------------------------------------------

    def render(self, prompt: Text, response: Text | None) -> tuple[str, str | None]:
        """(prompt text, response text); the response text follows the prompt text."""
        if isinstance(prompt, str):
            return prompt, response
        if not self.chat_template:
            raise ValueError(
                "conversational or conditioned records need a chat template, and the "
                "tokenizer has none; set data.chat_template (a Jinja template)"
            )
        try:
            prompt_text = self._apply(prompt, add_generation_prompt=True)
            if response is None:
                return prompt_text, None
            full = self._apply(prompt + response, add_generation_prompt=False)
        except Exception as e:
            raise _template_failure(e) from e
        if not full.startswith(prompt_text):
            raise BadRecord(
                "template_error",
                "the chat template renders the prompt (with generation prompt) differently "
                "from the start of the whole conversation, so the response boundary is unknown",
            )
        return prompt_text, full[len(prompt_text) :]

    def _apply(self, messages: list, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=self.chat_template,
        )

    # -- encoding ----------------------------------------------------------

    def encode_prompt(self, prompt_text: str, chat: bool = False) -> tuple[np.ndarray, int]:
        """(ids with at most one BOS and the user slots, n_bos).

        BOS follows the ecosystem: plain text gets one exactly when the tokenizer adds it on
        encode (`tokenizer(text)`, as TRL tokenizes plain records); chat-rendered text keeps
        what the template wrote and gets nothing added (`apply_chat_template(tokenize=True)`
        adds no special tokens). A BOS already at the start is never doubled."""
        ids = list(self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        n_bos = 0
        if self.bos_id is not None:
            starts_with_bos = bool(ids) and ids[0] == self.bos_id
            if starts_with_bos or (not chat and self.adds_bos):
                while ids and ids[0] == self.bos_id:
                    ids = ids[1:]
                n_bos = 1
        ids = [self.bos_id] * n_bos + [self.user_slot_token_id] * self.n_user_tokens + ids
        if not ids:
            raise BadRecord(
                "empty_prompt",
                "the prompt is empty and nothing precedes the response (the tokenizer adds no BOS), "
                "so the first response token has no position to be predicted from",
            )
        return np.asarray(ids, np.int32), n_bos

    def encode_response(
        self, response_text: str, weights: ResponseWeights | None = None, content: str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(ids ending in exactly one EOS, per-token weights or None).

        `content` is the response text as the user wrote it (spans index into it);
        it must appear in `response_text` (the template may wrap it).
        """
        enc = self.tokenizer(
            response_text, add_special_tokens=False, return_offsets_mapping=weights is not None
        )
        ids = list(enc["input_ids"])
        n_kept = len(ids)
        while n_kept and ids[n_kept - 1] != self.eos_id and self._is_blank(ids[n_kept - 1]):
            n_kept -= 1
        if n_kept and ids[n_kept - 1] == self.eos_id:
            ids = ids[:n_kept]
        else:
            ids = ids + [self.eos_id]
        token_weights = None
        if weights is not None:
            token_weights = self._align_weights(
                weights, enc["offset_mapping"], len(ids), response_text, content
            )
        return np.asarray(ids, np.int32), token_weights

    def _is_blank(self, token_id: int) -> bool:
        return not self.tokenizer.decode([token_id]).strip()

    def _align_weights(self, weights, offsets, n_ids, response_text, content) -> np.ndarray:
        if weights.token_weights is not None:
            if len(weights.token_weights) != n_ids:
                raise BadRecord(
                    "bad_token_weights",
                    f"{len(weights.token_weights)} token weights for a response of {n_ids} "
                    "tokens (response text as rendered, EOS included)",
                )
            return np.asarray(weights.token_weights, np.float32)
        start = response_text.find(content) if content else 0
        if start < 0:
            raise BadRecord(
                "bad_token_weights",
                "the chat template changed the response text, so spans cannot be placed",
            )
        out = np.full(n_ids, self.default_token_weight, np.float32)
        for t, (a, b) in enumerate(offsets[:n_ids]):
            hit = [w for s, e, w in weights.spans if a - start < e and b - start > s and b > a]
            if hit:
                out[t] = max(hit)
        return out

    # -- length handling ---------------------------------------------------

    def truncate_prompt(self, prompt_ids: np.ndarray, n_bos: int) -> np.ndarray:
        limit = self.max_prompt_length
        if limit is None or len(prompt_ids) <= limit:
            return prompt_ids
        if self.drop_over_length:
            raise BadRecord(
                "over_length",
                f"the prompt has {len(prompt_ids)} tokens, above max_prompt_length={limit}",
            )
        fixed = n_bos + self.n_user_tokens
        if self.truncation_mode == "keep_end":
            return np.concatenate([prompt_ids[:fixed], prompt_ids[len(prompt_ids) - (limit - fixed) :]])
        return prompt_ids[:limit]

    def response_budget(self, prompt_ids: np.ndarray) -> int:
        return self.max_length - len(prompt_ids)

    def sequence(
        self, prompt_ids, n_bos, response_ids, response_weights=None, budget: int | None = None
    ) -> TokenizedSequence:
        """Assemble one sequence, cutting the response to `budget` tokens (keep start)."""
        budget = self.response_budget(prompt_ids) if budget is None else budget
        if self.drop_over_length and len(response_ids) > budget:
            raise BadRecord(
                "over_length",
                f"prompt + response are {len(prompt_ids)} + {len(response_ids)} tokens; "
                f"max_length={self.max_length} leaves {max(budget, 0)} for the response",
            )
        if budget <= 0:
            raise BadRecord(
                "response_truncated",
                f"the prompt has {len(prompt_ids)} tokens, max_length={self.max_length} "
                "leaves none for the response",
            )
        return TokenizedSequence(
            prompt_ids=prompt_ids,
            response_ids=response_ids[:budget],
            n_user_slots=self.n_user_tokens,
            n_bos=n_bos,
            response_weights=None if response_weights is None else response_weights[:budget],
        )


# What a template raises when it rejects one record's messages: Jinja's own errors
# (`raise_exception`, undefined fields) and Python errors from fields of the wrong shape.
_RECORD_TEMPLATE_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError)


def _template_failure(err: Exception) -> Exception:
    """A `BadRecord` when the template rejected this record; otherwise `DataSetupError`:
    a missing package or a template that does not compile would fail every record alike,
    so skipping it would silently drop the whole data set."""
    try:
        import jinja2
    except ImportError:
        jinja2 = None
    if isinstance(err, ImportError):
        return DataSetupError(
            f"the chat template cannot run because a package is missing: {str(err).rstrip('.')}. "
            "This is not a problem with the data: install the package and rerun"
        )
    if jinja2 is not None and isinstance(err, jinja2.TemplateSyntaxError):
        return DataSetupError(
            f"the chat template does not compile (template line {err.lineno}: {err.message}); "
            "fix data.chat_template, or the tokenizer's chat_template"
        )
    if (jinja2 is not None and isinstance(err, jinja2.TemplateError)) or isinstance(
        err, _RECORD_TEMPLATE_ERRORS
    ):
        return BadRecord("template_error", f"chat template failed: {err}")
    return DataSetupError(
        f"rendering the chat template failed with {type(err).__name__}: {err}. "
        "This is not a problem with the data: check the tokenizer and the environment"
    )


def response_content(response: Text) -> str:
    """The text a user wrote for a response (what weight spans index into)."""
    if isinstance(response, str):
        return response
    return response[0]["content"] if len(response) == 1 else ""
