"""The XLA flags every test process runs with.

The suite compiles far more than it computes (tiny models, a few steps, hundreds of distinct
programs), and on CPU most of a compile is the backend's optimisation passes: without them a
program compiles about a third faster and runs slower, which only the long trainings feel
(those set `optimised_env`). What a program computes does not change; tests compare programs
with each other and with float64 references under tolerances, never with numbers measured
under other flags.
"""

import glob
import os

FAST_COMPILE = "--xla_backend_optimization_level=0"


def with_fast_compile(flags: str = "") -> str:
    return f"{flags} {FAST_COMPILE}".strip() if FAST_COMPILE not in flags else flags


def optimised_env(env: dict | None = None) -> dict:
    """`env` (default: this process's) with the CPU backend's optimisation passes back on."""
    env = dict(os.environ if env is None else env)
    flags = env.get("XLA_FLAGS", "").replace(FAST_COMPILE, "").strip()
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    return env


def on_cpu_only() -> bool:
    """Whether this machine has no GPU or TPU driver to offer JAX (asked without starting JAX)."""
    accelerators = (
        glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/accel[0-9]*") + glob.glob("/dev/vfio/[0-9]*")
    )
    return os.environ.get("JAX_PLATFORMS", "") == "cpu" or not accelerators
