"""Prompt records in, response texts out: rendering, soft tokens, sampling and decoding.

Prompts are rendered by the data pipeline with the run's templates and chat template
(`prompting.PromptRenderer`); P-DPO checkpoints get the user's soft tokens. Decoding
stops at every EOS id the model's files name (`stop_ids`); the text keeps a stop id that
is an ordinary token, as transformers' does (`stop_ids.response_text`). `alignjax
generate`, `alignjax eval` and the fidelity reproductions all sample through
`generate_texts`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from alignjax.generation import sampler, soft_prompt
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.generation.policy import USER_MODEL_KEY, Policy
from alignjax.generation.prompting import PromptRenderer, RenderedPrompt
from alignjax.generation.stop_ids import response_text


def sampling_config(
    policy: Policy, max_new_tokens=128, temperature=1.0, top_k=0, top_p=1.0
) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=policy.eos_ids,
        pad_id=policy.pad_id,
    )


def decode_response(policy: Policy, ids: Sequence[int]) -> str:
    """Text of generated ids without special tokens; an ordinary final stop token stays."""
    return response_text(policy.tokenizer, ids)


def _generate_ids(
    policy: Policy, sampling: SamplingConfig, rows: list[RenderedPrompt], rng
) -> list[list[int]]:
    prompts = [r.ids.tolist() for r in rows]
    user_params = policy.extras.get(USER_MODEL_KEY)
    n_slots = rows[0].n_user_slots
    if n_slots == 0:
        return sampler.generate(policy.params, policy.cfg, sampling, prompts, rng)
    if user_params is None:
        raise ValueError(
            f"{policy.source}: the run config reserves loss.pdpo.n_user_tokens={n_slots} user slots, but the "
            "checkpoint has no user_model; pass the config of the stage this checkpoint was trained in"
        )
    embeds_BxTxD = soft_prompt.soft_tokens_BxTxD(user_params, [r.user_index for r in rows])
    if embeds_BxTxD.shape[1] != n_slots:
        raise ValueError(
            f"the user model makes {embeds_BxTxD.shape[1]} soft tokens but loss.pdpo.n_user_tokens={n_slots}; "
            "pass the run config this checkpoint was trained with"
        )
    return soft_prompt.generate_with_soft_tokens(
        policy.params, policy.cfg, sampling, prompts, [r.n_bos for r in rows], embeds_BxTxD, rng
    )


def generate_texts(
    policy: Policy,
    renderer: PromptRenderer,
    records: Sequence[dict[str, Any]],
    sampling: SamplingConfig,
    *,
    seed: int = 0,
    num_samples: int = 1,
    batch_size: int = 64,
    where: str = "--prompt",
) -> list[list[str]]:
    """`num_samples` responses for each prompt record (see `prompting`), in record order.

    Rows go through the sampler in batches of `batch_size` (the last one padded with
    copies so every batch has one compiled shape); batch i draws with fold_in(seed, i),
    so a run is reproducible for a given (seed, batch_size).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be at least 1")
    rendered = [renderer.render(r, where, i) for i, r in enumerate(records)]
    rows = [p for p in rendered for _ in range(num_samples)]
    width = min(batch_size, len(rows))
    key = jax.random.key(seed)
    out: list[list[int]] = []
    for i, start in enumerate(range(0, len(rows), width)):
        chunk = rows[start : start + width]
        padded = chunk + [chunk[0]] * (width - len(chunk))
        out += _generate_ids(policy, sampling, padded, jax.random.fold_in(key, i))[: len(chunk)]
    texts = [decode_response(policy, ids) for ids in out]
    return [texts[k * num_samples : (k + 1) * num_samples] for k in range(len(records))]


def parse_weights(text: str) -> dict[str, float]:
    """'helpful=0.3,harmless=0.7' -> {'helpful': 0.3, 'harmless': 0.7}."""
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None or not np.isfinite(number) or number < 0:
            raise ValueError(
                f"--weights {text!r}: {item!r} is not objective=weight with a weight >= 0; "
                "write e.g. --weights helpful=0.3,harmless=0.7"
            )
        out[name.strip()] = number
    return out
