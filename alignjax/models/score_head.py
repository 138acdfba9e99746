"""The scalar score head of a reward model (transformers' `*ForSequenceClassification.score`).

A bias-free linear map from the decoder's final hidden state to `num_labels` scores,
trained as a part beside the decoder (`{"decoder": ..., "score_head": {"kernel": [D, C]}}`).
Hugging Face stores it as `score.weight` [C, D].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCORE_HEAD_KEY = "score_head"


def init_score_head(rng: jax.Array, hidden_size: int, std: float, dtype=jnp.float32, num_labels: int = 1):
    """A new head as transformers draws one for a causal LM loaded as a classifier:
    N(0, initializer_range^2), no bias."""
    return {"kernel": std * jax.random.normal(rng, (hidden_size, num_labels), jnp.float32).astype(dtype)}


def token_scores_BxLxC(head, hidden_BxLxD: jax.Array) -> jax.Array:
    """Float32 scores of every position; a sequence's reward is read at one of them."""
    kernel_DxC = head["kernel"].astype(hidden_BxLxD.dtype)
    return jnp.einsum("bld,dc->blc", hidden_BxLxD, kernel_DxC, preferred_element_type=jnp.float32)
