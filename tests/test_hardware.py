"""The per-chip peaks MFU divides by: the device table by `device_kind`, or a given figure."""

import pytest

from alignjax.core.hardware import chip, peak_flops


@pytest.mark.parametrize(
    "kind, name, peak",
    [
        ("NVIDIA H100 80GB HBM3", "H100", 989e12),
        ("NVIDIA H200", "H200", 989e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),  # not the SXM part its name starts like
        ("TPU v5 lite", "v5e", 197e12),
        ("TPU v5", "v5p", 459e12),
    ],
)
def test_device_kinds_match_their_chip(kind, name, peak):
    assert (chip(kind).name, chip(kind).peak_flops) == (name, peak)
    assert peak_flops(kind) == (peak, f"table: {name}")


def test_a_given_peak_wins_and_cpu_has_none():
    assert peak_flops("cpu") == (None, None)
    assert peak_flops("cpu", 2.5) == (2.5e12, "--peak-tflops")
    assert peak_flops("NVIDIA H200", 500.0) == (500e12, "--peak-tflops")
    with pytest.raises(ValueError, match="--peak-tflops"):
        peak_flops("cpu", 0.0)
