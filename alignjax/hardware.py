"""What each accelerator can do: the per-chip figures MFU and memory checks compare against."""

from __future__ import annotations

# Dense bf16 peak FLOP/s per chip, for MFU; None where no single figure applies (CPU).
DEVICE_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
}


def device_peak_flops() -> float | None:
    import jax

    kind = jax.devices()[0].device_kind
    for name, peak in DEVICE_PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak
    return None
