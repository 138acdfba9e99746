"""Low-rank adapters (LoRA) on the decoder's projections, as PEFT defines them.

A targeted projection y = x W computes y = x W + (x A) B * scale, with A [in..., r] and
B [r, out...] (PEFT's lora_A / lora_B weights, transposed and kept in the projection's
head structure), scale = alpha / r, or alpha / sqrt(r) with rsLoRA. A starts as PEFT's
Kaiming-uniform draw, B at zero, so a fresh adapter leaves the model unchanged.

Adapters live in their own Flax collection ("lora") beside the frozen "params"; a
decoder tree with adapters is `Adapted(base, adapters)`, and every decoder entry point
accepts either form. The base alone is the model with adapters off: the reference of a
LoRA run, with no second copy of the weights.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# Hugging Face module names (PEFT's `target_modules`) <-> the decoder's projection names.
HF_TO_PROJECTION = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
}
PROJECTION_TO_HF = {v: k for k, v in HF_TO_PROJECTION.items()}
DEFAULT_TARGETS = tuple(HF_TO_PROJECTION)
DROPOUT_RNG = "lora_dropout"  # the Flax rng stream of the adapters' dropout


class Adapted(NamedTuple):
    """A decoder tree with adapters: the frozen base and the "lora" collection.

    `dropout_rng`: set on the policy's forward in a training step, where the adapters'
    input dropout (`model.lora.dropout`, PEFT's lora_dropout) is active; None elsewhere
    (reference, eval, sampling, export), where it is off as in PEFT's eval mode.
    """

    base: Any
    adapters: Any
    dropout_rng: Any = None


def base_of(params):
    """The base decoder tree (the adapters off)."""
    return params.base if isinstance(params, Adapted) else params


def rngs(params) -> dict[str, Any]:
    """Flax rngs for `Decoder.apply`: the adapters' dropout key when it is active."""
    if isinstance(params, Adapted) and params.dropout_rng is not None:
        return {DROPOUT_RNG: params.dropout_rng}
    return {}


def dropout(x, rate: float, rng):
    """PEFT's lora_dropout on the adapter's input (inverted: kept values scaled by 1/(1-rate))."""
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


def variables(params) -> dict[str, Any]:
    """Flax variables for `Decoder.apply`."""
    if isinstance(params, Adapted):
        return {"params": params.base, "lora": params.adapters}
    return {"params": params}


def scale(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def a_init(rng, shape, dtype):
    """PEFT's init of lora_A (Kaiming-uniform, a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = math.prod(shape[:-1])
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(rng, shape, dtype, -bound, bound)


def delta(x, a_INxR, b_RxOUT, n_in: int, factor: float, dtype):
    """(x A) B * scale over the trailing `n_in` axes of x, in the compute dtype."""
    x_axes = tuple(range(x.ndim - n_in, x.ndim))
    xa = jax.lax.dot_general(x.astype(dtype), a_INxR.astype(dtype), ((x_axes, tuple(range(n_in))), ((), ())))
    y = jax.lax.dot_general(xa, b_RxOUT.astype(dtype), (((xa.ndim - 1,), (0,)), ((), ())))
    return y * jnp.asarray(factor, dtype)
