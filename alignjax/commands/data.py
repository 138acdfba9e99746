"""`alignjax data check CONFIG [key=value ...] [--stage NAME]`: the data check of every
stage, on its own, as training would run it before step 1 (`alignjax.train.data_check`)."""

from __future__ import annotations

import argparse
import logging
import sys

import jax

from alignjax.core import hub
from alignjax.core.errors import run_command
from alignjax.data.byte_tokenizer import make_byte_tokenizer
from alignjax.data.load_tokenizer import load_tokenizer
from alignjax.train.bootstrap import prepare_builtin_data
from alignjax.train.config import TrainConfig, load_config, stages
from alignjax.train.data_check import cached_check, checked_sets
from alignjax.train.datasets import stage_data


def _tokenizer(cfg: TrainConfig):
    """The tokenizer training uses (`bootstrap.tokenizer_for`), without loading the model."""
    if cfg.model.hf_path is not None:  # a local directory, a bucket URL or a Hub name
        return load_tokenizer(hub.model_dir(cfg.model.hf_path, revision=cfg.model.revision, weights=False))
    return make_byte_tokenizer()


def _check(args: argparse.Namespace) -> int:
    # force: importing Orbax lets absl configure logging first, which would hide INFO lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    cfg = load_config(args.config, args.overrides)
    all_stages = stages(cfg)
    names = [s.name for s in all_stages]
    if args.stage is not None and args.stage not in names:
        raise ValueError(f"--stage {args.stage}: the config's stages are {names}")
    data_dir = prepare_builtin_data(cfg)
    tokenizer = _tokenizer(cfg)
    stops = []
    for index, stage in enumerate(all_stages):
        if args.stage is not None and stage.name != args.stage:
            continue
        data = stage_data(stage, index, data_dir, cfg.run_dir)
        for label, dcfg in checked_sets(stage, data):
            summary, path, cached = cached_check(
                cfg.run_dir,
                stage.name,
                label,
                dcfg,
                tokenizer,
                workers=data.train.worker_count,
                per_host_batch_size=dcfg.batch_size // jax.process_count(),
                progress=True,
            )
            print("\n".join(summary.report(f"stage {stage.name} {label}", dcfg)))
            print(f"  summary: {path}{' (cached)' if cached else ''}")
            if summary.stops_run(dcfg.on_bad_record):
                stops.append(f"stage {stage.name} {label}")
    if stops:
        print(f"data.on_bad_record: error would stop training: bad records in {', '.join(stops)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="alignjax data",
        description="Read every record of each stage's data as training would, and summarise it: "
        "records per source, bad records by reason, lengths, truncation, batch efficiency. "
        "Exits 1 when data.on_bad_record: error would stop training.",
    )
    parser.add_argument("action", choices=["check"])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="the same overrides as for train")
    parser.add_argument("--stage", help="check this stage's data only (default: every stage's)")
    return run_command("data check", _check, parser.parse_intermixed_args(argv))


if __name__ == "__main__":
    sys.exit(main())
