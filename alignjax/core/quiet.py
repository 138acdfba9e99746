"""Start-up noise every command would print, removed at its source.

- libtpu installed on a machine with no TPU chips: JAX's backend probe loads it, and it
  prints a screen of C++ warnings plus "Unable to initialize backend 'tpu'". When no TPU
  device files exist (and no GPU plugin needs probing), JAX is told to use the CPU.
- Orbax logs, through absl, warnings that describe normal operation: opening a
  checkpoint read-only to export it, a metadata file older checkpoints lack, waiting for
  the previous asynchronous save after the last step. Those messages, and only those,
  are dropped; every other warning still shows.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os

# Chips appear as /dev/accel* (TPU v2-v5e) or VFIO groups (v5p, v6e).
_TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")
_ORBAX_ROUTINE = (
    "CheckpointManagerOptions.read_only=True",
    "Given directory is read only",
    "Metadata file does not exist",
    "Waiting for previous save to complete",
)


def _has_tpu_chips() -> bool:
    return any(glob.glob(pattern) for pattern in _TPU_DEVICE_GLOBS)


def skip_absent_tpu() -> None:
    """Use the CPU without probing for a TPU that is not there. Not for `compile-check`,
    which loads libtpu on purpose to describe TPU chips."""
    if os.environ.get("JAX_PLATFORMS") or _has_tpu_chips():
        return
    if importlib.util.find_spec("libtpu") is None or any(importlib.util.find_spec(p) for p in _GPU_PLUGINS):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"


class _DropRoutineOrbax(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _ORBAX_ROUTINE)


def quiet_logs() -> None:
    """Drop Orbax's routine warnings and JAX's backend-probe line (idempotent)."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _DropRoutineOrbax) for f in absl.filters):
        absl.addFilter(_DropRoutineOrbax())
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
