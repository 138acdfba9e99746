"""The `alignjax` command line: names each verb and hands its arguments to the verb's
module in `alignjax.commands`, imported only when that verb runs (and after the logging
and TPU-probe settings that must precede importing JAX)."""

from __future__ import annotations

import argparse
import importlib
import sys

from alignjax.core import quiet

# verb -> (module, one-line help)
COMMANDS = {
    "train": ("alignjax.commands.train", "train a model from a YAML config"),
    "convert": (
        "alignjax.commands.convert",
        "convert between Hugging Face and Orbax checkpoints (alignjax convert hf-to-orbax|orbax-to-hf SRC DST)",
    ),
    "describe": ("alignjax.commands.describe", "build a config's model and run one forward pass"),
    "plot": ("alignjax.commands.plot", "draw a run's training curves to PNG (alignjax plot RUN_DIR)"),
    "bench": (
        "alignjax.commands.bench",
        "benchmarks: logps | data | generate | train | trl | quantize (alignjax bench WHAT --help)",
    ),
    "generate": (
        "alignjax.commands.generate",
        "sample from a trained model, prompted as in training (alignjax generate MODEL --prompt ...)",
    ),
    "precompute-ref": (
        "alignjax.commands.precompute_ref",
        "compute reference log-probs once, for loss.reference: precomputed "
        "(alignjax precompute-ref CONFIG [key=value ...])",
    ),
    "compile-check": (
        "alignjax.commands.compile_check",
        "compile each stage's programs for a TPU topology or the local devices and report per-chip "
        "memory (alignjax compile-check CONFIG [key=value ...] [--topology v5p:2x2x1])",
    ),
    "data": (
        "alignjax.commands.data",
        "read every record of a config's data as training would and summarise it: bad records, "
        "lengths, truncation, batch efficiency (alignjax data check CONFIG [key=value ...] [--stage NAME])",
    ),
    "eval": (
        "alignjax.commands.eval",
        "sweep weights / conditions / P-DPO users, score, Pareto plot, steerability (alignjax eval --help)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level help: each verb's own parser lives in its module."""
    parser = argparse.ArgumentParser(
        prog="alignjax", description="Preference alignment for language models in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb, (_, help_text) in COMMANDS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not (argv and argv[0] == "compile-check"):
        quiet.skip_absent_tpu()
    quiet.quiet_logs()
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints the usage (and exits) for help or an unknown verb
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
