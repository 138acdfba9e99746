"""The decoder's parameter-bearing layers: RMS norm and head-shaped projections (with LoRA).

Every parameter is declared through `param`, so each dimension carries a logical axis
name (see `LOGICAL_AXES` users in `alignjax/core/sharding.py`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignjax.models import lora
from alignjax.models.config import ModelConfig
from alignjax.models.quantize import QTensor

# Logical names of an activation's leading [batch, length] dimensions.
ACT_ROWS = ("activation_batch", "activation_length")

kernel_init = nn.initializers.normal(stddev=0.02)


def param(module: nn.Module, name: str, shape, axes, init):
    dtype = jnp.dtype(module.cfg.param_dtype)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    cfg: ModelConfig
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        init = nn.initializers.zeros if cfg.norm_plus_one else nn.initializers.ones
        scale = param(self, "scale", (x.shape[-1],), (self.axis_name,), init)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
        if cfg.norm_plus_one:
            # Gemma multiplies by (1 + w) in float32 before casting back.
            return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
        # Llama-style: cast first, then multiply by the weight in the compute dtype.
        return normed.astype(x.dtype) * scale.astype(x.dtype)


class Projection(nn.Module):
    """A dense layer whose kernel keeps the head structure ([D, H, Dh] and friends)."""

    cfg: ModelConfig
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        dtype = jnp.dtype(self.cfg.dtype)
        stored = self.get_variable("params", "kernel") if self.has_variable("params", "kernel") else None
        if isinstance(stored, QTensor):
            # A QLoRA base: dequantized here, inside the layer, so one layer's kernel is
            # materialised at a time (Flax's param() would reject the codes' shape).
            kernel = stored.dequantize(dtype)
        else:
            kernel = param(
                self, "kernel", self.in_shape + self.out_shape, self.in_axes + self.out_axes, kernel_init
            )
        n_in = len(self.in_shape)
        x_axes = tuple(range(x.ndim - n_in, x.ndim))
        y = jax.lax.dot_general(
            x.astype(dtype), kernel.astype(dtype), ((x_axes, tuple(range(n_in))), ((), ()))
        )
        if self.use_bias:
            bias = param(self, "bias", self.out_shape, self.out_axes, nn.initializers.zeros)
            y = y + bias.astype(dtype)
        cfg = self.cfg
        # Adapters when this projection is a target and they exist: the base alone (the
        # reference of a LoRA run) is applied without the "lora" collection.
        if self.name in cfg.lora_targets and (self.has_variable("lora", "a") or self.is_initializing()):
            y = y + self._lora(x, dtype, n_in)
        return y

    def _lora(self, x, dtype, n_in: int):
        cfg, r = self.cfg, self.cfg.lora_rank
        if cfg.lora_dropout > 0 and self.has_rng(lora.DROPOUT_RNG):
            x = lora.dropout(x, cfg.lora_dropout, self.make_rng(lora.DROPOUT_RNG))
        pdtype = jnp.dtype(cfg.param_dtype)

        def boxed(init, shape, axes):
            return nn.with_logical_partitioning(lambda: init(self.make_rng("params"), shape, pdtype), axes)()

        a = self.variable(
            "lora", "a", boxed, lora.a_init, self.in_shape + (r,), self.in_axes + ("lora_rank",)
        ).value
        b = self.variable(
            "lora", "b", boxed, nn.initializers.zeros, (r,) + self.out_shape, ("lora_rank",) + self.out_axes
        ).value
        return lora.delta(x, a, b, n_in, cfg.lora_scale, dtype)
