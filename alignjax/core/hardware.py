"""What each accelerator can do: the per-chip figures MFU and memory checks compare against.

One table: dense bf16 peak FLOP/s and HBM per chip, by the `device_kind` JAX reports (a
TPU topology compiled against from a CPU host reports the same kinds). Longer names come
first where one kind's name starts another's ("TPU v5 lite" before "TPU v5").
"""

from __future__ import annotations

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # what users call it
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bytes: int


CHIPS: dict[str, Chip] = {
    "TPU v4": Chip("v4", 275e12, 32 * GiB),
    "TPU v5 lite": Chip("v5e", 197e12, 16 * GiB),
    "TPU v5e": Chip("v5e", 197e12, 16 * GiB),
    "TPU v5p": Chip("v5p", 459e12, int(95.74 * GiB)),
    "TPU v5": Chip("v5p", 459e12, int(95.74 * GiB)),
    "TPU v6 lite": Chip("v6e", 918e12, 32 * GiB),
    "TPU7x": Chip("v7x", 2307e12, 192 * GiB),
    "NVIDIA H100 80GB HBM3": Chip("H100", 989e12, 80 * GiB),
    "NVIDIA H100": Chip("H100", 989e12, 80 * GiB),
    "NVIDIA H200": Chip("H200", 989e12, 141 * GiB),
    "NVIDIA A100-SXM4-80GB": Chip("A100", 312e12, 80 * GiB),
}


def chip(device_kind: str) -> Chip | None:
    """The table's entry for a device kind (its longest matching prefix), or None (CPU)."""
    matches = [k for k in CHIPS if device_kind.startswith(k)]
    return CHIPS[max(matches, key=len)] if matches else None


def device_peak_flops() -> float | None:
    import jax

    entry = chip(jax.devices()[0].device_kind)
    return entry.peak_flops if entry else None
