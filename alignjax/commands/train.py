"""`alignjax train CONFIG [key=value ...]`: run every stage of a training config."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from alignjax.core.errors import run_command
from alignjax.train.config import load_config
from alignjax.train.loop import Preempted, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignjax train", description="Train a model from a YAML config.")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.steps=100 mesh.fsdp=4")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("train", _train, build_parser().parse_args(argv))


def _train(args: argparse.Namespace) -> int:
    # force: importing Orbax lets absl configure logging first, which would hide INFO lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save bookkeeping
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per Hub request
    cfg = load_config(args.config, args.overrides)
    try:
        summary = run(cfg)
    except Preempted as stop:
        print(f"preempted: checkpointed step {stop.step} in {cfg.run_dir}/checkpoints; rerun to resume")
        return 143
    print(f"finished at step {summary['step']}; run directory {cfg.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
