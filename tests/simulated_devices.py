"""Run a script in a fresh process whose JAX sees 8 simulated CPU devices (the flag takes
effect only before JAX starts, so never in the test process itself)."""

import os
import subprocess
import sys

from xla_flags import with_fast_compile


def run_on_8_devices(argv: list[str], python_path: list[str], timeout: int) -> subprocess.CompletedProcess:
    """`python *argv` with 8 CPU devices and `python_path` ahead of the inherited PYTHONPATH;
    output captured as text, the exit status left to the caller."""
    env = dict(
        os.environ,
        XLA_FLAGS=with_fast_compile("--xla_force_host_platform_device_count=8"),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([*python_path, os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, *argv], check=False, env=env, capture_output=True, text=True, timeout=timeout
    )
