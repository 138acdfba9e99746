"""How the sampler turns next-token logits into a token: temperature, top-k, top-p.

Filters are applied in the order transformers applies its logits warpers (temperature,
then top-k, then top-p), so a (temperature, top_k, top_p) setting means what users of
`generate` expect. Removed tokens get -inf; `jax.random.categorical` never draws them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static decoding settings; hashable, so the jitted sampler is keyed on them.

    temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 switch those filters off.
    A row stops after emitting any id in `eos_ids` (kept in the output) or after
    `max_new_tokens`; later slots hold `pad_id`.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k={self.top_k} must be >= 0 (0 keeps every token)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p={self.top_p} must be in (0, 1] (1 keeps every token)")
        if not isinstance(self.eos_ids, tuple):
            raise TypeError(f"sampling.eos_ids must be a tuple of ints, got {self.eos_ids!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def top_k_filter(logits_BxV, k: int):
    """Keep the k largest logits per row (and any tied with the k-th), -inf elsewhere."""
    if k <= 0 or k >= logits_BxV.shape[-1]:
        return logits_BxV
    kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
    return jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)


def top_p_filter(logits_BxV, p: float):
    """Keep the smallest set of most likely tokens whose probability reaches p (the nucleus).

    A token is kept when the probability of the tokens strictly more likely than it is
    below p, so the most likely token always survives. The cut is turned into a logit
    threshold, which keeps ties with the last kept token instead of splitting them by sort
    order.
    """
    if p >= 1.0:
        return logits_BxV
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV.astype(jnp.float32), axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_BxV = mass_before_BxV < p
    threshold_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)


def choose_tokens(logits_BxV, sampling: SamplingConfig, key):
    """[B] int32 next tokens; `key` is unused when greedy."""
    if sampling.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV.astype(jnp.float32) / sampling.temperature
    logits_BxV = top_k_filter(logits_BxV, sampling.top_k)
    logits_BxV = top_p_filter(logits_BxV, sampling.top_p)
    return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)
