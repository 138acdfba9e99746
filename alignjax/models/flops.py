"""Model FLOPs of a training step, counted as MaxText counts them (for MFU).

Per token, a matmul with N weights costs 2N FLOPs forward and 4N backward. Embedding
lookups are free, so the input table is not counted; the output projection is (tied or
not). Causal attention adds its score and value matmuls, 2 * 2 * L^2 / 2 * heads *
head_dim per layer and row forward (half the square: causal), three times that for
forward + backward. A frozen reference runs the forward only.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax

from alignjax.models import decoder
from alignjax.models.config import ModelConfig

FORMULA = (
    "policy 6 * N_matmul * tokens + reference 2 * N_matmul * tokens "
    "+ attention 4 * rows * L^2 / 2 * heads * head_dim * layers * (3 policy + 1 reference); "
    "N_matmul = parameters - input embedding table + output projection"
)


@dataclasses.dataclass(frozen=True)
class StepFlops:
    params: int
    matmul_params: int
    tokens: int
    dense: float
    attention: float

    @property
    def total(self) -> float:
        return self.dense + self.attention


@functools.lru_cache(maxsize=32)
def _param_counts(cfg: ModelConfig) -> tuple[int, int]:
    shapes = jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.key(0)))
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    table = cfg.vocab_size * cfg.hidden_size
    embeddings = table * (1 if cfg.tie_embeddings else 2)
    return n, n - embeddings + table


def step_flops(cfg: ModelConfig, rows: int, length: int, with_reference: bool) -> StepFlops:
    """FLOPs of one optimizer micro-step over [rows, length] tokens (padding included, as
    the hardware computes it)."""
    n, n_matmul = _param_counts(cfg)
    tokens = rows * length
    dense = (6 + (2 if with_reference else 0)) * n_matmul * tokens
    attention_fwd = 2 * 2 * rows * length * length / 2 * cfg.num_heads * cfg.head_dim * cfg.num_layers
    return StepFlops(n, n_matmul, tokens, dense, attention_fwd * (3 + (1 if with_reference else 0)))
