"""The data check before step 1 (`data.check`); `alignjax data check` runs it on its own.

Each data set a stage reads (its training stream and its eval sets) goes through
`alignjax.data.check` once per fingerprint: the data (file contents, tokenizer, every
setting that changes tokenisation, `fingerprints.data_identity`) and the batching the
efficiency is measured for. The summary is cached as
`<run_dir>/data_check/<stage>-<set>-<fingerprint>.json`, so a resumed run reads it
instead of the data. With `ALIGNJAX_DATA_CHECK_CACHE` naming a directory (local or
`gs://`), summaries are also kept there as `<fingerprint>.json`, so a new run directory
over data already checked (a sweep, a rerun) copies the summary instead of reading
the data again. Every process checks (or reads the cache) for itself: the answer
is the same on all of them, so they stop together without a collective, and hosts
need not share a disk.

Under `on_bad_record: error` a bad record stops the run before step 1, named by
file:line and reason as the pipeline would name it; under `skip` the counts per reason
are logged before step 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import jax

from alignjax.core import paths
from alignjax.data.check import check_data
from alignjax.data.check_summary import SUMMARY_VERSION, CheckSummary
from alignjax.data.config import DataConfig
from alignjax.data.records import DataError
from alignjax.core.fileio import atomic_write_json
from alignjax.train.bootstrap import RunSetup
from alignjax.train.config import Stage, TrainConfig
from alignjax.train.datasets import StageData, eval_label
from alignjax.train.fingerprints import data_identity
from alignjax.train.methods import method_for

log = logging.getLogger("alignjax.data_check")

CHECK_DIR = "data_check"
SHARED_CACHE_ENV = "ALIGNJAX_DATA_CHECK_CACHE"


def checked_sets(stage: Stage, data: StageData) -> list[tuple[str, DataConfig]]:
    """(label, config) of every data set a stage reads from files: its training stream, as its
    batch source reads it, and its eval sets."""
    train = data.train
    if method_for(stage.config.loss).batch_source is not None:
        # An online method's source reads the training data as prompts and samples the
        # responses itself (`Method.batch_record_type`), whatever data.record_type says.
        train = dataclasses.replace(train, record_type="prompt")
    return [("data.train", train)] + [(eval_label(name), cfg) for name, cfg in data.evals.items()]


def _fingerprint(cfg: DataConfig, tokenizer, per_host_batch_size: int) -> str:
    """The data's identity plus what else the summary depends on; `on_bad_record` is not part
    of it (the summary counts bad records either way)."""
    batching = {
        "per_host_batch_size": per_host_batch_size,
        "packing": cfg.packing,
        "pack_length": cfg.effective_pack_length,
        "max_sequences_per_row": cfg.max_sequences_per_row,
        "buckets": cfg.effective_buckets,
        "shuffle": cfg.shuffle,
        "seed": cfg.seed,
        "cut_positive_score": cfg.cut_positive_score,  # which CUT records carry a second view
        "margin_field": cfg.margin_field,  # a record without a valid margin is a bad record
        "over_length": cfg.over_length,  # whether an over-long record is cut or dropped
    }
    blob = {"version": SUMMARY_VERSION, "data": data_identity(cfg, tokenizer), "batching": batching}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_check(
    run_dir: str,
    stage: str,
    label: str,
    cfg: DataConfig,
    tokenizer,
    *,
    workers: int,
    per_host_batch_size: int,
    progress: bool,
) -> tuple[CheckSummary, str, bool]:
    """(summary, its cache file, whether it came from the cache)."""
    what = f"stage {stage} {label}"
    fp = _fingerprint(cfg, tokenizer, per_host_batch_size)
    path = paths.join(run_dir, CHECK_DIR, f"{stage}-{label.removeprefix('data.')}-{fp}.json")
    shared_dir = os.environ.get(SHARED_CACHE_ENV)
    shared = paths.join(shared_dir, f"{fp}.json") if shared_dir else None
    for found in (path, shared):
        if found and paths.exists(found):
            with paths.open(found) as f:
                summary = CheckSummary.from_json(json.load(f))
            if found != path:  # the run directory keeps its own record of what was checked
                atomic_write_json(path, summary.to_json(), indent=1)
            log.info(
                "data check of %s: reusing %s (the data has not changed since it was checked)", what, found
            )
            return summary, path, True
    summary = check_data(
        cfg,
        tokenizer,
        workers=workers,
        per_host_batch_size=per_host_batch_size,
        progress=progress,
        what=what,
    )
    # Every process writes the same summary; the write is atomic, so sharing a disk is safe.
    for target in (path, shared):
        if target:
            atomic_write_json(target, summary.to_json(), indent=1)
    log.info("data check of %s: %d records in %.1fs -> %s", what, summary.records, summary.seconds, path)
    return summary, path, False


def _argv(cfg: TrainConfig) -> str:
    return " ".join(getattr(cfg, "_argv", None) or ("CONFIG",))


def check_stage_data(run: RunSetup, stage: Stage, data: StageData) -> None:
    """Before a stage's first step: stop on a bad record (`error`), or log what will be skipped."""
    if not data.train.check:
        log.info("data check of stage %s: off (data.check: false)", stage.name)
        return
    for label, cfg in checked_sets(stage, data):
        summary, _, _ = cached_check(
            run.cfg.run_dir,
            stage.name,
            label,
            cfg,
            run.tokenizer,
            workers=data.train.worker_count,
            per_host_batch_size=cfg.batch_size // jax.process_count(),
            progress=jax.process_index() == 0,
        )
        what = f"stage {stage.name} {label}"
        if summary.stops_run(cfg.on_bad_record):
            counts = ", ".join(f"{r}={n}" for r, n in summary.bad.items())
            step = stage.first_step + 1
            raise DataError(
                f"{summary.first_error()} Found before step {step} by the data check of {what}: "
                f"{sum(summary.bad.values())} of its {summary.records} records are bad ({counts}); "
                f"`alignjax data check {_argv(run.cfg)}` lists them."
            )
        if summary.records and not summary.n_examples:  # the pipeline would search forever
            lost = {**summary.bad, **summary.dropped}
            raise DataError(
                f"data check of {what}: none of its {summary.records} records is left to train on "
                f"({summary.reason_counts(lost)}); over-long records are dropped under "
                f"data.over_length: drop (reward models' default): raise data.max_length / "
                f"data.max_prompt_length or set data.over_length: truncate. "
                f"`alignjax data check {_argv(run.cfg)}` lists them."
            )
        if summary.bad:
            log.warning(
                "data check of %s: %d of %d records will be skipped: %s",
                what,
                sum(summary.bad.values()),
                summary.records,
                summary.reason_counts(summary.bad),
            )
        if summary.dropped:
            log.warning(
                "data check of %s: %d records will be dropped by max_length=%d: %s",
                what,
                sum(summary.dropped.values()),
                cfg.max_length,
                summary.reason_counts(summary.dropped),
            )
        if summary.efficiency is not None:
            log.info(
                "data check of %s: %d examples, %d truncated; %s efficiency %.1f%%",
                what,
                summary.n_examples,
                summary.truncated,
                summary.efficiency_of,
                100 * summary.efficiency,
            )
