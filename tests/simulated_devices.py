"""Run a script in a fresh process whose JAX sees 8 simulated CPU devices (the flag takes
effect only before JAX starts, so never in the test process itself)."""

import os
import subprocess
import sys


def run_on_8_devices(argv: list[str], python_path: list[str], timeout: int) -> subprocess.CompletedProcess:
    """`python *argv` with 8 CPU devices and `python_path` ahead of the inherited PYTHONPATH;
    output captured as text, the exit status left to the caller."""
    env = dict(
        os.environ,
        # The scripts compare programs against each other under one compiler, and compiling
        # dominates their time: the CPU backend's optimisation passes (not what is computed)
        # are turned off, which compiles about a third faster.
        XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([*python_path, os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, *argv], check=False, env=env, capture_output=True, text=True, timeout=timeout
    )
