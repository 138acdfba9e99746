"""The decoder's static configuration.

One dataclass describes every supported family; `families.py` fills it from a Hugging
Face `config.json`, so nothing here is ever typed by hand per checkpoint. The fields
split in two: architecture (fixed by the checkpoint) and execution (dtype, scan, remat,
attention backend), which a training config may change freely.
"""

from __future__ import annotations

import dataclasses
from typing import Any

FULL = "full_attention"
SLIDING = "sliding_attention"

# splash_interpret runs the TPU kernel through the Pallas interpreter: for tests on CPU.
ATTENTION_BACKENDS = ("xla", "dot_product", "cudnn", "splash", "splash_interpret")
# How generation's new tokens attend to the KV cache (`decode_attention.py`); auto picks the
# paged TPU kernel on TPU where the model meets its rules, the XLA einsum elsewhere.
DECODE_ATTENTION = ("auto", "xla", "paged", "paged_interpret")
SEQUENCE_PARALLEL = ("all_gather", "ring")
# What scores each token's label log-prob from the final hidden states (`losses/logps_kernel.py`):
# the vocabulary-chunked XLA code, or Tokamax's fused linear cross-entropy (its Mosaic TPU
# kernel; tokamax_interpret runs that kernel through the Pallas TPU interpreter, for tests).
LOGPS_KERNELS = ("auto", "chunked", "tokamax", "tokamax_interpret")
REMAT_POLICIES = (
    "none",
    "minimal",
    "full",
    "save_qkv_proj",
    "save_out_proj",
    "save_dot_except_mlp",
    "save_dot_with_context_except_mlp",
    "save_dots",
    "qkv_proj_offloaded",
    "minimal_offloaded",
)


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding for one layer type (HF `rope_parameters`)."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture + execution settings of the decoder. Hashable, so jit can key on it."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float = 1e-6
    # Gemma stores RMSNorm weights as offsets from 1 and multiplies in float32.
    norm_plus_one: bool = False
    activation: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    # Gemma 2/3: extra norms after attention and around the MLP.
    sandwich_norms: bool = False
    scale_embeddings: bool = False
    query_scale: float = 0.0  # 0 means head_dim ** -0.5
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    tie_embeddings: bool = False
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    rope: tuple[tuple[str, RopeConfig], ...] = ()
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Execution.
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_backend: str = "xla"
    decode_attention: str = "auto"
    logps_kernel: str = "auto"
    # The most sequences one row holds (packed rows); set by the trainer from the data.
    max_segments_per_row: int = 1
    # When the mesh splits rows over its `sequence` axis: how attention crosses the shards
    # (all_gather | ring), and whether rows are reordered so each shard has an equal share of
    # the causal mask's work (zig-zag, undone on output).
    sequence_parallel: str = "all_gather"
    sequence_load_balance: bool = True
    # LoRA (models/lora.py): rank 0 is off; targets are projection names (q, k, v, o, gate,
    # up, down); scale is alpha / rank (alpha / sqrt(rank) with rsLoRA).
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()
    lora_scale: float = 1.0
    lora_dropout: float = 0.0  # on the adapters' input, in training steps only

    def __post_init__(self):
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"model.attention_backend={self.attention_backend!r} is not one of {ATTENTION_BACKENDS}"
            )
        if self.decode_attention not in DECODE_ATTENTION:
            raise ValueError(
                f"model.decode_attention={self.decode_attention!r} is not one of {DECODE_ATTENTION}"
            )
        if self.logps_kernel not in LOGPS_KERNELS:
            raise ValueError(f"model.logps_kernel={self.logps_kernel!r} is not one of {LOGPS_KERNELS}")
        if self.sequence_parallel not in SEQUENCE_PARALLEL:
            raise ValueError(
                f"model.sequence_parallel={self.sequence_parallel!r} is not one of {SEQUENCE_PARALLEL}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model.remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}")
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def scale(self) -> float:
        return self.query_scale or self.head_dim**-0.5

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
