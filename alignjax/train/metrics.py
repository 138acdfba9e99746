"""The one logging path for training metrics: JSON lines, TensorBoard, optionally W&B.

Every `MetricsWriter.write(step, metrics)` appends one line to `<run_dir>/metrics.jsonl`,
`{"step": step, **metrics}`, which is the record `alignjax plot` and any analysis read,
and mirrors the same numbers to TensorBoard (`<run_dir>/tb`) and, when configured,
Weights & Biases. Eval metrics go through the same call with `prefix="eval/"`.

Values are converted to Python numbers first (NumPy and JAX scalars included). A NaN or
infinite value is written to the JSON line as `null`, because strict JSON has no token
for it and a `NaN` literal breaks readers other than Python's; TensorBoard and W&B get
the float itself, so a diverging loss is still visible there.

Only the primary process (JAX process 0) writes anything; the others get a writer
whose calls do nothing, so the training loop needs no `if` around logging.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np

from alignjax.core import paths
from alignjax.core.errors import MissingDependencyError
from alignjax.core.fileio import atomic_write_text

log = logging.getLogger("alignjax.train")

JSONL_NAME = "metrics.jsonl"
TB_DIR_NAME = "tb"


def to_number(name: str, value: Any) -> float | int:
    """A Python int or float from a Python, NumPy or JAX scalar (or 1-element array)."""
    # bool before int (it is one); float() and int() also unwrap NumPy's float64 and int
    # subclasses, so the record holds plain Python numbers.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if getattr(value, "is_fully_addressable", True) is False:
        # On a multi-host mesh a replicated jax.Array spans other hosts' devices and
        # cannot be fetched whole, but every host holds a full copy.
        if not value.sharding.is_fully_replicated:
            raise TypeError(
                f"metric {name!r} is sharded across hosts; reduce it to a replicated scalar "
                "inside the jitted step (or gather it with jax.experimental.multihost_utils)"
            )
        value = value.addressable_data(0)
    try:
        array = np.asarray(value)
    except Exception as e:  # jax raises its own types for e.g. a deleted buffer
        raise TypeError(f"metric {name!r}: cannot read {type(value).__name__} as a number ({e})") from e
    if array.size != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(
            f"metric {name!r} must be a scalar number, got {type(value).__name__} with "
            f"dtype {array.dtype} and shape {array.shape}; reduce it (e.g. .mean()) before logging"
        )
    item = array.reshape(()).item()
    return int(item) if isinstance(item, (bool, int)) else float(item)


def _json_safe(value: float) -> float | int | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsWriter:
    """Writes metrics of a run; see the module docstring for what goes where.

    `wandb` is None (no W&B) or the keyword arguments of `wandb.init`, e.g.
    `dict(project="alignjax", name="dpo-llama", config=config_dict)`; its `dir` defaults
    to the run directory when that is local. To continue the same W&B run after a restart, include its
    `id` and `resume="allow"`; W&B ignores steps it has already recorded, so the
    re-trained stretch after the checkpoint appears only in the jsonl and TensorBoard.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        wandb: Mapping[str, Any] | None = None,
        is_primary: bool = True,
    ):
        self.run_dir = os.fspath(run_dir)
        self.jsonl_path = paths.join(self.run_dir, JSONL_NAME)
        self.is_primary = is_primary
        self._tensorboard = tensorboard and is_primary
        self._tb_writer = None
        # TensorBoard drops events at and after this step from earlier event files, so a
        # resumed run does not show the abandoned stretch of the old one.
        self._tb_purge_step: int | None = None
        self._wandb_run = None
        self._jsonl: TextIO | None = None
        if not is_primary:
            return
        if self._tensorboard:
            _import_tensorboardx()  # fail at start-up, not at the first log step
        if wandb is not None:
            # W&B keeps its files on a local disk: beside a local run, in its default place otherwise.
            local_dir = {} if paths.is_remote(self.run_dir) else {"dir": self.run_dir}
            self._wandb_run = _import_wandb().init(**{**local_dir, **dict(wandb)})
        paths.makedirs(self.run_dir)

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """Logs `metrics` at `step`, keys prefixed (`prefix="eval/"`); returns the JSON record."""
        values = {f"{prefix}{name}": to_number(f"{prefix}{name}", value) for name, value in metrics.items()}
        if "step" in values:
            raise ValueError("a metric may not be named 'step': it is the record's step field")
        record = {"step": int(step), **{name: _json_safe(value) for name, value in values.items()}}
        if not self.is_primary:
            return record
        line = json.dumps(record, allow_nan=False) + "\n"
        if paths.is_remote(self.jsonl_path):
            paths.append_text(self.jsonl_path, line)  # a bucket has no append: the object is rewritten
        else:
            if self._jsonl is None:
                self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
            # A whole line per write and a flush, so a crash leaves at most one partial line.
            self._jsonl.write(line)
            self._jsonl.flush()
        if self._tensorboard:
            writer = self._tb()
            for name, value in values.items():
                writer.add_scalar(name, value, global_step=int(step))
            writer.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=int(step))
        return record

    def truncate_after(self, step: int) -> int:
        """Drops records with step > `step` from metrics.jsonl; returns how many.

        Call it when resuming from the checkpoint at `step`, before the first `write`:
        the steps after it are about to be trained again. A last line cut short by a
        crash is dropped too; a broken line elsewhere is an error.
        """
        if not self.is_primary:
            return 0
        self._tb_purge_step = step + 1
        if self._tb_writer is not None:  # reopen so the purge marker is written
            self._tb_writer.close()
            self._tb_writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if not paths.exists(self.jsonl_path):
            return 0
        with paths.open(self.jsonl_path, encoding="utf-8") as f:
            lines = f.readlines()
        kept, dropped = [], 0
        for number, line in enumerate(lines, start=1):
            try:
                record_step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                if number == len(lines):
                    dropped += 1
                    continue
                raise ValueError(
                    f"{self.jsonl_path}:{number}: not a metrics record ({e}); fix or delete that line"
                ) from e
            if record_step > step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
        # Atomically, so a crash here cannot lose the kept history.
        atomic_write_text(self.jsonl_path, "".join(kept))
        return dropped

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _tb(self):
        if self._tb_writer is None:
            tensorboardx = _import_tensorboardx()
            # Event files are named by the second and host, and opened for writing, not
            # appending: without a unique suffix a writer reopened within the same second
            # (a quick restart, or truncate_after) would wipe the previous file.
            self._tb_writer = tensorboardx.SummaryWriter(
                paths.join(self.run_dir, TB_DIR_NAME),
                purge_step=self._tb_purge_step,
                filename_suffix=f".{uuid.uuid4().hex[:8]}",
            )
        return self._tb_writer


class ProgressBar:
    """A tqdm bar of steps with the latest loss, accuracy and throughput.

    Shown only on the primary process and when `file` (stderr by default) is a
    terminal, so logs of batch jobs are not filled with carriage returns; pass
    `enabled=True` to force it on. Without the bar (output to a file: a pod worker's
    log, nohup, SLURM) the primary process logs one line per update instead, with the
    same fields and an ETA.
    """

    # (metric key, label, format) in display order; metrics absent from a step are skipped.
    FIELDS = (
        ("loss", "loss", "{:.4f}"),
        ("rewards/accuracies", "acc", "{:.3f}"),
        ("tokens_per_sec", "tok/s", "{:,.0f}"),
    )

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        is_primary: bool = True,
        enabled: bool | None = None,
        file: TextIO | None = None,
    ):
        from tqdm import tqdm

        file = sys.stderr if file is None else file
        if enabled is None:
            enabled = is_primary and _isatty(file)
        self.enabled = enabled and is_primary
        self.log_lines = is_primary and not self.enabled
        self.total = total
        # The ETA's origin moves to the first update, so compilation does not slow it down.
        self._origin: tuple[float, int] = (time.perf_counter(), initial)
        self._updates = 0
        self._bar = tqdm(
            total=total, initial=initial, file=file, disable=not self.enabled, unit="step", dynamic_ncols=True
        )

    def _shown(self, metrics: Mapping[str, Any] | None) -> dict[str, str]:
        shown = {}
        for key, label, fmt in self.FIELDS:
            if metrics and key in metrics:
                value = to_number(key, metrics[key])
                shown[label] = fmt.format(value) if math.isfinite(value) else str(value)
        return shown

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Moves the bar to `step` (steps done, so the last is `total`) and shows `metrics`."""
        if self.log_lines:
            self._log_line(step, metrics)
        if not self.enabled:
            return
        if metrics:
            self._bar.set_postfix(self._shown(metrics), refresh=False)
        self._bar.update(step - self._bar.n)

    def _log_line(self, step: int, metrics: Mapping[str, Any] | None) -> None:
        now = time.perf_counter()
        start, first_step = self._origin
        parts = [f"step {step}/{self.total}"]
        parts += [f"{label} {value}" for label, value in self._shown(metrics).items()]
        if self._updates and step > first_step:
            left_s = (now - start) / (step - first_step) * (self.total - step)
            parts.append(f"eta {_duration(left_s)}")
        else:
            self._origin = (now, step)
        self._updates += 1
        log.info(", ".join(parts))

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _isatty(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def _import_tensorboardx():
    try:
        import tensorboardX
    except ImportError as e:
        raise MissingDependencyError(
            "TensorBoard logging needs the `tensorboardX` package: pip install tensorboardX, "
            "or turn TensorBoard off (MetricsWriter(..., tensorboard=False))"
        ) from e
    return tensorboardX


def _import_wandb():
    try:
        import wandb
    except ImportError as e:
        raise MissingDependencyError(
            "Weights & Biases logging was requested but the `wandb` package is not installed: "
            "pip install wandb (and `wandb login`), or remove the wandb settings from the config"
        ) from e
    return wandb
