"""Model FLOPs of a training step, counted as MaxText counts them (for MFU).

Per token, a matmul with N weights costs 2N FLOPs forward and 4N backward: 2N for the
gradient of its input (the activations) and 2N for the gradient of its weights. The
trained policy costs 6N. Under LoRA the base is frozen, so its weights get no gradient but
the activations' gradient still runs through every layer: 2N forward + 2N backward, and
the adapters, trained, their full 6 N_adapters. Embedding lookups are free, so the input
table is not counted; the output projection is (tied or not). Causal attention adds its
score and value matmuls, 2 * 2 * L^2 / 2 * heads * head_dim per layer and row forward (half
the square: causal), three times that for forward + backward (with or without LoRA: the
gradient flows through it). A frozen reference runs the forward only; an objective with
no reference, or one reading precomputed reference log-probs, runs none.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax

from alignjax.models import decoder
from alignjax.models.config import ModelConfig

FORMULA = (
    "per token: policy 6 * N_matmul (LoRA: 4 * N_matmul + 6 * N_adapters) "
    "+ reference 2 * N_matmul (0 without a reference forward: no reference, or precomputed log-probs) "
    "+ attention 4 * (L / 2) * heads * head_dim * layers * (3 policy + 1 reference); "
    "per step: per token * rows * L * micro-batches (padding included); "
    "N_matmul = parameters - input embedding table + output projection"
)


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """One micro-step over `rows` x `length` tokens (padding included, as the hardware
    computes it), per token by term."""

    params: int  # the decoder's parameters
    matmul_params: int  # N_matmul: the weights a matmul reads per token
    adapter_params: int  # N_adapters: LoRA's trained adapters; 0 without LoRA
    rows: int
    length: int
    policy_per_token: int
    reference_per_token: int
    attention_per_token: int  # policy's and reference's, at this length

    @property
    def tokens(self) -> int:
        return self.rows * self.length

    @property
    def per_token(self) -> int:
        return self.policy_per_token + self.reference_per_token + self.attention_per_token

    @property
    def dense(self) -> int:
        return (self.policy_per_token + self.reference_per_token) * self.tokens

    @property
    def attention(self) -> int:
        return self.attention_per_token * self.tokens

    @property
    def total(self) -> int:
        return self.dense + self.attention


@functools.lru_cache(maxsize=32)
def _param_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """(decoder parameters, matmul parameters, adapter parameters) of a config."""
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    n = count(jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.key(0))))
    table = cfg.vocab_size * cfg.hidden_size
    embeddings = table * (1 if cfg.tie_embeddings else 2)
    adapters = (
        count(jax.eval_shape(lambda: decoder.init_adapters(cfg, jax.random.key(0)))) if cfg.lora_rank else 0
    )
    return n, n - embeddings + table, adapters


def step_flops(cfg: ModelConfig, rows: int, length: int, with_reference: bool) -> StepFlops:
    """FLOPs of one optimizer micro-step over [rows, length] tokens; `with_reference`: the
    step runs a frozen reference's forward."""
    n, n_matmul, n_adapters = _param_counts(cfg)
    policy = 4 * n_matmul + 6 * n_adapters if cfg.lora_rank else 6 * n_matmul
    attention_pass = 4 * length // 2 * cfg.num_heads * cfg.head_dim * cfg.num_layers
    return StepFlops(
        params=n,
        matmul_params=n_matmul,
        adapter_params=n_adapters,
        rows=rows,
        length=length,
        policy_per_token=policy,
        reference_per_token=2 * n_matmul if with_reference else 0,
        attention_per_token=attention_pass * (3 + (1 if with_reference else 0)),
    )
