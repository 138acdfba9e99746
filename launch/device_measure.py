"""The child process of a device-check bench step (launch/device_check.py).

Usage: python launch/device_measure.py REPORT BENCH_ARGS...

Runs `alignjax BENCH_ARGS...` in this process, then writes to REPORT, as JSON, its exit
status, the bench's report (its `--json` file when given, else the last JSON object it
printed) and the peak device memory this process reached: JAX's allocator, and PyTorch's
when it ran on CUDA (TRL's side of `bench trl`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys


def last_json_object(text: str) -> dict | None:
    """The last top-level JSON object printed in `text` (a bench report among log lines)."""
    decoder = json.JSONDecoder()
    found = None
    for start in (i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found = value
    return found


def peak_bytes() -> dict:
    """This process's peak device memory: JAX's allocator, and PyTorch's when it used CUDA."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = {"jax": stats.get("peak_bytes_in_use"), "torch": None, "platform": jax.default_backend()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["torch"] = torch.cuda.max_memory_allocated()
    return peak


def measure(report_path: str, argv: list[str]) -> int:
    """Run `alignjax ARGV` here, then write {rc, report, peak} to `report_path`."""
    from alignjax import cli

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        rc = cli.main(argv)
    sys.stdout.write(captured.getvalue())
    report = None
    json_path = argv[argv.index("--json") + 1] if "--json" in argv else None
    if json_path and os.path.exists(json_path):
        with open(json_path) as f:
            report = json.load(f)
    report = report or last_json_object(captured.getvalue())
    with open(report_path, "w") as f:
        json.dump({"rc": rc, "report": report, "peak": peak_bytes()}, f, indent=2)
    return rc


if __name__ == "__main__":
    sys.exit(measure(sys.argv[1], sys.argv[2:]))
