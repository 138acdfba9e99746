"""Reward models from Hugging Face `*ForSequenceClassification` checkpoints, run in JAX.

Such a checkpoint is a decoder backbone (`model.*`, the causal-LM names minus `lm_head`)
plus `score.weight` [num_labels, D], imported by `convert.sequence_classification`, so
every family the decoder supports imports the same way (and a reward model alignjax
trained and exported is one). A sequence's score is the head applied to the hidden state
of one token, chosen by transformers' rule (`pooled_index_B`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.convert.api import load_hf_model
from alignjax.core import hub
from alignjax.convert.sequence_classification import SCORE_TENSOR, is_sequence_classifier, read_score_head
from alignjax.models import decoder
from alignjax.models.config import ModelConfig
from alignjax.models.families import load_hf_config_dict
from alignjax.models.score_head import SCORE_HEAD_KEY


@dataclasses.dataclass
class RewardModel:
    cfg: ModelConfig  # the backbone's; it has no LM head
    params: dict[str, Any]
    score_DxC: np.ndarray
    # config.json's pad_token_id, which transformers uses to find each row's last token.
    pad_token_id: int | None

    @property
    def num_labels(self) -> int:
        return self.score_DxC.shape[1]


def load_reward_model(hf_dir: str, **execution: Any) -> RewardModel:
    """Import a local `*ForSequenceClassification` directory; `execution` sets dtype, scan, ..."""
    config_dict = load_hf_config_dict(hf_dir)
    if not is_sequence_classifier(config_dict):
        raise ValueError(
            f"{hf_dir}/config.json: architectures={config_dict.get('architectures') or []} has no "
            "*ForSequenceClassification entry; a reward model needs a sequence-classification checkpoint "
            f"with a {SCORE_TENSOR!r} head (a causal LM cannot score text)"
        )
    cfg, params, _ = load_hf_model(hf_dir, **execution)
    score_DxC = read_score_head(hf_dir, cfg)[SCORE_HEAD_KEY]["kernel"]
    return RewardModel(cfg, params, score_DxC, config_dict.get("pad_token_id"))


def pooled_index_B(tokens_BxL, attention_mask_BxL, pad_token_id: int | None):
    """The token whose hidden state is scored, per row.

    With a pad id this is transformers' rule exactly: the rightmost token that is not the
    pad id (0 if every token is), whichever side the padding is on and whatever the
    attention mask says. Without one transformers takes the last column and refuses
    batches; here the last attended token is used instead, which agrees with it on every
    batch it accepts.
    """
    column_L = jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32)
    keep_BxL = (tokens_BxL != pad_token_id) if pad_token_id is not None else attention_mask_BxL != 0
    return jnp.argmax(column_L[None] * keep_BxL.astype(jnp.int32), axis=-1)


def scores_BxC(params, score_DxC, cfg: ModelConfig, pad_token_id: int | None, tokens_BxL, attention_mask_BxL):
    """Float32 scores [B, num_labels] of token rows padded on either side."""
    mask_BxL = attention_mask_BxL.astype(jnp.int32)
    # Positions count from each row's first real token, as for an unpadded sequence.
    positions_BxL = jnp.maximum(jnp.cumsum(mask_BxL, axis=-1) - 1, 0)
    hidden_BxLxD = decoder.apply(params, cfg, tokens_BxL, positions_BxL, mask_BxL)
    index_B = pooled_index_B(tokens_BxL, mask_BxL, pad_token_id)
    pooled_BxD = jnp.take_along_axis(hidden_BxLxD, index_B[:, None, None], axis=1)[:, 0]
    return jnp.einsum(
        "bd,dc->bc",
        pooled_BxD,
        jnp.asarray(score_DxC).astype(pooled_BxD.dtype),
        preferred_element_type=jnp.float32,
    )


@functools.lru_cache(maxsize=16)
def make_scorer(cfg: ModelConfig, pad_token_id: int | None):
    """`scores_BxC` jitted for one model: fn(params, score_DxC, tokens_BxL, mask_BxL)."""

    def fn(params, score_DxC, tokens_BxL, attention_mask_BxL):
        return scores_BxC(params, score_DxC, cfg, pad_token_id, tokens_BxL, attention_mask_BxL)

    return jax.jit(fn)


class ModelReward:
    """A reward model as a reward function: (prompts, responses) -> float32 scores [N].

    Text goes through the reward model's own tokenizer (from `hf_dir`): with its chat
    template when it has one (a user turn, then an assistant turn), else as prompt +
    response. Rows are scored `batch_size` at a time, right-padded to a power-of-two length
    so that a run compiles a handful of shapes.
    """

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 8,
        max_length: int = 2048,
        label: int = 0,
        chat_template: bool | None = None,
        revision: str | None = None,
        **execution: Any,
    ):
        from alignjax.data.load_tokenizer import load_tokenizer

        path = hub.model_dir(
            path, revision=revision, key="reward_model path", revision_key="reward_model revision"
        )
        self.model = load_reward_model(path, **execution)
        if not 0 <= label < self.model.num_labels:
            raise ValueError(
                f"reward_model {path}: label={label} but the score head has {self.model.num_labels} labels"
            )
        self.tokenizer = load_tokenizer(path)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ValueError(
                f"reward_model {path}: chat_template=True but its tokenizer has no chat template"
            )
        self.use_chat_template = has_template if chat_template is None else chat_template
        # Not data.load_tokenizer.tokenizer_pad_id: config.json's pad id comes first, since
        # it is the pooling rule (`pooled_index_B`); without one the filler is never read
        # (pooling and attention follow the mask), so any id will do and none is an error.
        pad_id = self.model.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.pad_id = pad_id
        self.batch_size, self.max_length, self.label = batch_size, max_length, label
        self._scorer = make_scorer(self.model.cfg, self.model.pad_token_id)
        # On the device once, not re-sent with every batch.
        self._params, self._score_DxC = jax.device_put((self.model.params, self.model.score_DxC))

    def token_ids(self, prompts: list[str], responses: list[str]) -> list[list[int]]:
        if self.use_chat_template:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
                )
                for p, r in zip(prompts, responses)
            ]
            # The template already wrote the special tokens.
            encoded = self.tokenizer(
                texts, add_special_tokens=False, truncation=True, max_length=self.max_length
            )
        else:
            texts = [p + r for p, r in zip(prompts, responses)]
            encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [list(ids) for ids in encoded["input_ids"]]

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"reward_model: {len(prompts)} prompts but {len(responses)} responses")
        from alignjax.generation.sampler import bucket_length

        rows = self.token_ids(prompts, responses)
        out = np.zeros((len(rows),), np.float32)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            length = bucket_length(max(len(r) for r in chunk))
            tokens_BxL = np.full((self.batch_size, length), self.pad_id, np.int32)
            mask_BxL = np.zeros((self.batch_size, length), np.int32)
            for b, ids in enumerate(chunk):
                tokens_BxL[b, : len(ids)] = ids
                mask_BxL[b, : len(ids)] = 1
            scores = self._scorer(self._params, self._score_DxC, tokens_BxL, mask_BxL)
            out[start : start + len(chunk)] = np.asarray(scores)[: len(chunk), self.label]
        return out
