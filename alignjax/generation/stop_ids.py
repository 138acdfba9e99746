"""The token ids generation stops at: every end-of-sequence id the model's files name.

transformers' `generate` stops at each id of generation_config.json's `eos_token_id` (an
int or a list: Gemma 3 lists <eos> and <end_of_turn>, Llama 3 Instruct three ids), while
config.json and the tokenizer name one EOS each, and not always the same one. A sampler
that knew only the tokenizer's EOS would run on past an instruct model's end of turn.

A generation config may also list an ordinary token (a full stop, a newline) as a stop id.
transformers' `generate` + `decode(skip_special_tokens=True)` and vLLM keep such a token in
the returned text and drop only special tokens; `response_text` does the same, so rewards
and users see the answer those tools would return.
"""

from __future__ import annotations

from typing import Any, Sequence

from alignjax.models.config import ModelConfig


def stop_ids(tokenizer, model_cfg: ModelConfig, generation_config: dict[str, Any] | None) -> tuple[int, ...]:
    """The union of the generation config's, config.json's and the tokenizer's EOS ids.

    In that order, each id once: the first is the id transformers treats as the EOS.
    `generation_config` is generation_config.json's content (checkpoint meta
    "generation_config"), or None when the model has none.
    """
    named = (
        ("generation_config.json eos_token_id", (generation_config or {}).get("eos_token_id")),
        ("config.json eos_token_id", model_cfg.eos_token_id),
        ("tokenizer eos_token_id", tokenizer.eos_token_id),
    )
    ids: list[int] = []
    for where, value in named:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where} is {value!r}; it must be a token id or a list of token ids")
            ids.append(v)
    return tuple(dict.fromkeys(ids))


def response_text(tokenizer, ids: Sequence[int]) -> str:
    """The text of generated ids, a final stop id included, as transformers returns it: a
    special stop token goes with the other special tokens, an ordinary one stays."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)
