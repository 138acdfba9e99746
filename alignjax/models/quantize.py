"""A quantized frozen base for QLoRA: NF4 or int8 projection kernels, dequantized per layer.

Each projection kernel (q, k, v, o, gate, up, down) of the base is stored as codes plus
one float32 absmax scale per block of `BLOCK` consecutive input features of one output
feature, the blocking bitsandbytes uses for NF4 (its blocks run over the input features
of each output row of a torch Linear weight). Embeddings, norms, biases and the LM head
stay in the compute dtype, as in QLoRA.

- nf4: the 16 NormalFloat levels of the QLoRA paper (quantiles of a normal distribution,
  exact zero), two codes per byte: 4.5 bits per weight with the scales.
- int8: symmetric absmax per block, round to nearest: 8.5 bits per weight. (Not LLM.int8's
  outlier decomposition, which needs a mixed-precision matmul; blocks keep outliers local.)

A kernel of shape lead + in + out (lead: the stacked layers axis of a scanned decoder)
keeps that layout with its last input axis split into [blocks, block]: codes and scales
shard along the same logical axes as the kernel, and a scanned decoder slices them per
layer like any parameter. `Projection` dequantizes its kernel inside the layer, so one
layer's full-precision kernel exists at a time (and is recomputed, not saved, by remat).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

KINDS = ("nf4", "int8")
BLOCK = 64

# The NF4 levels (QLoRA, Dettmers et al. 2023, appendix E), ascending.
NF4_LEVELS = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    np.float32,
)

# How many trailing axes of each projection's kernel are output axes (Projection's out_shape).
PROJECTION_OUT_AXES = {"q": 2, "k": 2, "v": 2, "o": 1, "gate": 1, "up": 1, "down": 1}


@flax.struct.dataclass
class QTensor:
    """A quantized kernel. codes: uint8 (two NF4 codes per byte) or int8; scales: float32.
    The kernel's last input axis (index -(n_out + 1)) is split into [blocks, block]."""

    codes: jax.Array
    scales: jax.Array
    kind: str = flax.struct.field(pytree_node=False)
    n_out: int = flax.struct.field(pytree_node=False)

    @property
    def axis(self) -> int:
        """The blocks axis of codes and scales (the block axis follows it)."""
        return self.codes.ndim - self.n_out - 2

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the full-precision kernel."""
        q, s = self.axis, self.codes.shape
        per_byte = 2 if self.kind == "nf4" else 1
        return s[:q] + (s[q] * s[q + 1] * per_byte,) + s[q + 2 :]

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        q = self.axis
        if self.kind == "nf4":
            high, low = self.codes >> 4, self.codes & 0x0F
            # Each byte holds two neighbouring features, the first in the high nibble.
            idx = jnp.stack([high, low], axis=q + 2)
            idx = idx.reshape(idx.shape[: q + 1] + (-1,) + idx.shape[q + 3 :])
            values = jnp.asarray(NF4_LEVELS)[idx.astype(jnp.int32)]
        else:
            values = self.codes.astype(jnp.float32) / 127.0
        return (values * self.scales).reshape(self.shape).astype(dtype)


def block_size(dim: int) -> int:
    """BLOCK features per scale, or the whole axis when it is shorter or does not divide
    (tiny test models); NF4 packs pairs, so the block must be even."""
    return BLOCK if dim % BLOCK == 0 else dim


def quantize(kernel: jax.Array, kind: str, n_out: int) -> QTensor:
    """Blockwise absmax quantization of `kernel` (lead + in + out, `n_out` output axes)."""
    if kind not in KINDS:
        raise ValueError(f"quantize_base={kind!r}: choose one of {list(KINDS)}")
    q = kernel.ndim - n_out - 1
    dim = kernel.shape[q]
    block = block_size(dim)
    if kind == "nf4" and block % 2:
        raise ValueError(f"nf4 packs pairs of input features; a kernel axis of {dim} is odd")
    x = kernel.astype(jnp.float32)
    x = x.reshape(x.shape[:q] + (dim // block, block) + x.shape[q + 1 :])
    absmax = jnp.max(jnp.abs(x), axis=q + 1, keepdims=True)
    # An all-zero block gets scale 1 (its codes encode zeros either way).
    scales = jnp.where(absmax > 0, absmax, 1.0)
    normed = x / scales
    if kind == "int8":
        codes = jnp.clip(jnp.round(normed * 127.0), -127, 127).astype(jnp.int8)
        return QTensor(codes, scales, kind, n_out)
    # Nearest level: count the midpoints below each value (a binary search, no 16x temporary).
    levels = jnp.asarray(NF4_LEVELS)
    idx = jnp.searchsorted((levels[1:] + levels[:-1]) / 2, normed).astype(jnp.uint8)
    pairs = idx.reshape(idx.shape[: q + 1] + (block // 2, 2) + idx.shape[q + 2 :])
    first = jax.lax.index_in_dim(pairs, 0, q + 2, keepdims=False)
    second = jax.lax.index_in_dim(pairs, 1, q + 2, keepdims=False)
    return QTensor((first << 4) | second, scales, kind, n_out)


def _is_projection(name, node) -> bool:
    return name in PROJECTION_OUT_AXES and isinstance(node, dict) and "kernel" in node


def quantize_tree(params, kind: str):
    """The decoder tree with every projection kernel quantized (jit it: it runs on device)."""

    def walk(tree):
        out = {}
        for name, node in tree.items():
            if _is_projection(name, node):
                out[name] = {**node, "kernel": quantize(node["kernel"], kind, PROJECTION_OUT_AXES[name])}
            elif isinstance(node, dict):
                out[name] = walk(node)
            else:
                out[name] = node
        return out

    return walk(params)


def quantized_axes(axes_tree, kind: str):
    """Logical axes for `quantize_tree(params, kind)`: codes and scales keep the kernel's
    axis names, the split input axis sharded over its blocks."""

    def split(spec: P, n_out: int) -> QTensor:
        names = tuple(spec)
        q = len(names) - n_out - 1
        return P(*names[:q], names[q], None, *names[q + 1 :])

    def walk(tree):
        out = {}
        for name, node in tree.items():
            if _is_projection(name, node):
                n_out = PROJECTION_OUT_AXES[name]
                spec = split(node["kernel"], n_out)
                out[name] = {**node, "kernel": QTensor(spec, spec, kind, n_out)}
            elif isinstance(node, dict):
                out[name] = walk(node)
            else:
                out[name] = node
        return out

    return walk(axes_tree)


def dequantize_tree(params, dtype):
    """Full-precision kernels again (what a merged export or a comparison needs)."""
    return jax.tree.map(
        lambda x: x.dequantize(dtype) if isinstance(x, QTensor) else x,
        params,
        is_leaf=lambda x: isinstance(x, QTensor),
    )


def frozen(params, kind: str | None, dtype):
    """A LoRA run's frozen base: projection kernels quantized (`kind`) or not, the other
    parameters in `dtype` (the reference dtype). Jit it with the shardings of `frozen_axes`."""
    if kind is not None:
        params = quantize_tree(params, kind)
    return jax.tree.map(
        lambda x: x if isinstance(x, QTensor) else x.astype(dtype),
        params,
        is_leaf=lambda x: isinstance(x, QTensor),
    )


def frozen_axes(axes_tree, kind: str | None):
    """Logical axes of `frozen(params, kind, dtype)`."""
    return quantized_axes(axes_tree, kind) if kind is not None else axes_tree


def is_quantized(params) -> bool:
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, QTensor))
    return any(isinstance(x, QTensor) for x in leaves)
