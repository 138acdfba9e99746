"""What each accelerator can do: the per-chip figures MFU and memory checks compare against.

One table: dense bf16 peak FLOP/s and HBM per chip, by the `device_kind` JAX reports (a
TPU topology compiled against from a CPU host reports the same kinds). A kind matches its
longest entry that starts it, so "NVIDIA H100 PCIe" is not read as the SXM part ("NVIDIA
H100 80GB HBM3"). NVIDIA's figures are the datasheets' dense ones (their tables print the
2:4-sparse figure, twice these).
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
    "NVIDIA H100 PCIe": Chip("H100 PCIe", 756e12, 80 * GiB),
    "NVIDIA H100 NVL": Chip("H100 NVL", 835e12, 94 * GiB),
    "NVIDIA H200": Chip("H200", 989e12, 141 * GiB),
    "NVIDIA H200 NVL": Chip("H200 NVL", 835e12, 141 * GiB),
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


def peak_flops(device_kind: str, peak_tflops: float | None = None) -> tuple[float | None, str | None]:
    """(dense bf16 peak FLOP/s per chip, where it came from): a given figure in TFLOP/s
    first (`--peak-tflops`), else the table's; (None, None) where neither is known."""
    if peak_tflops is not None:
        if peak_tflops <= 0:
            raise ValueError(f"--peak-tflops {peak_tflops}: a chip's peak must be > 0 TFLOP/s")
        return peak_tflops * 1e12, "--peak-tflops"
    entry = chip(device_kind)
    return (entry.peak_flops, f"table: {entry.name}") if entry else (None, None)
