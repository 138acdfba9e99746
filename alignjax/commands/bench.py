"""`alignjax bench WHAT`: the numbers the README records, measured by code, not tests.

logps     compiled memory of naive vs chunked log-probs (value and gradient)
data      Grain pipeline throughput (examples/s, tokens/s) on synthetic pairs
generate  sampler throughput (prefill and decode tokens/s) on a tiny model; --mixed: rows of
          mixed lengths against transformers' generate
train     training-step throughput of a config (tokens/s, step time, model FLOPs by term, MFU
          where the chip's peak is known or given)
trl       step time and tokens/s of alignjax and of TRL's DPOTrainer on the same ~100M model
          (or --preset) and data; --lengths ragged: sequences of mixed lengths
quantize  logits error of an NF4 / int8 base (QLoRA) against the full-precision base, on
          English text, then on random token ids
"""

from __future__ import annotations

import argparse
import json

from alignjax.core.errors import run_command
from alignjax.models.config import ATTENTION_BACKENDS


def _logps(args) -> dict:
    from alignjax.losses.memory import logps_memory_report

    report = logps_memory_report(args.batch, args.length, args.hidden, args.vocab)
    report["ratio_temp_naive_over_chunked"] = report["naive"]["temp_bytes"] / report["chunked"]["temp_bytes"]
    report["shape"] = {"batch": args.batch, "length": args.length, "hidden": args.hidden, "vocab": args.vocab}
    return report


def _data(args) -> dict:
    from alignjax.data.bench import run_data_benchmark

    return run_data_benchmark(
        n_records=args.records,
        batch_size=args.batch_size,
        max_length=args.max_length,
        packing=args.packing,
        worker_count=args.workers,
    )


def _generate(args) -> dict:
    if args.mixed:
        from alignjax.generation.bench_mixed import run_mixed_generate_benchmark

        return run_mixed_generate_benchmark(
            batch_size=args.batch_size, short=args.short, long=args.long, seed=args.seed
        )
    from alignjax.generation.bench import run_generate_benchmark

    return run_generate_benchmark()


def _train(args) -> dict:
    from alignjax.commands.bench_train import run_train_benchmark

    return run_train_benchmark(args.config, args.overrides, args.steps, args.peak_tflops)


def _trl(args) -> dict:
    from alignjax.train.bench_trl import bench_vs_trl

    return bench_vs_trl(
        args.batch_size,
        args.max_length,
        args.steps,
        args.lengths,
        preset=args.preset,
        preset_overrides=args.preset_override,
        dtype=args.dtype,
        attention_backend=args.attention_backend,
    )


def _quantize(args) -> dict:
    from alignjax.commands.bench_quantize import quantize_report

    return quantize_report(args)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignjax bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("logps", help="naive vs chunked log-prob memory (compiled)")
    for name, default in (("batch", 8), ("length", 2048), ("hidden", 4096), ("vocab", 128256)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.set_defaults(fn=_logps)
    p = sub.add_parser("data", help="pipeline examples/s and tokens/s")
    p.add_argument("--records", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(fn=_data)
    p = sub.add_parser("generate", help="sampler tokens/s")
    p.add_argument(
        "--mixed",
        action="store_true",
        help="half the rows stop after --short tokens, half run to --long, against transformers' "
        "generate on the same model and batch (needs the test extra)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--short", type=int, default=8)
    p.add_argument("--long", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_generate)
    p = sub.add_parser("train", help="training tokens/s of a config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="dense bf16 peak per chip in TFLOP/s, for MFU (default: the device table; none on CPU)",
    )
    _json_flag(p)
    p.set_defaults(fn=_train)
    _add_trl(sub)
    p = sub.add_parser("quantize", help="logits error of an NF4 / int8 base against the full-precision one")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-path", help="a Hugging Face model directory (local or gs://), or a Hub name")
    p.add_argument("--revision", help="a Hub name's branch, tag or commit (default: its default branch)")
    src.add_argument("--preset", help="a preset, initialised as model.preset runs are")
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE of the preset's config.json")
    p.add_argument("--kinds", nargs="+", default=["nf4", "int8"], choices=["nf4", "int8"])
    p.add_argument(
        "--text-file",
        help="UTF-8 text to measure on (default: a built-in English paragraph), tokenized with the "
        "model's tokenizer",
    )
    p.add_argument("--batch", type=int, default=4, help="rows of random token ids")
    p.add_argument(
        "--length", type=int, default=256, help="tokens: the text's first LENGTH, and each random row"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_quantize)
    args = parser.parse_args(argv)
    return run_command("bench", _print_report, args)


def _add_trl(sub) -> None:
    p = sub.add_parser(
        "trl", help="step time of alignjax vs TRL's DPOTrainer on one model (needs the test extra)"
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--lengths",
        choices=["full", "ragged"],
        default="full",
        help="full: every sequence max_length - 2 tokens; ragged: each drawn uniformly from 25%% to 100%% "
        "of it (seed 0), alignjax packing rows, TRL padding each batch to its longest",
    )
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="an alignjax model preset (model.preset), initialised once and read by both trainers "
        "(default: the built-in ~100M Llama)",
    )
    p.add_argument(
        "--preset-override",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a config.json key of --preset, the value parsed as YAML (model.preset_overrides); repeatable",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="compute dtype over float32 parameters: alignjax's model.dtype, TRL's bf16 autocast",
    )
    p.add_argument(
        "--attention-backend",
        choices=ATTENTION_BACKENDS,
        default="xla",
        help="alignjax's model.attention_backend (TRL uses PyTorch's sdpa)",
    )
    _json_flag(p)
    p.set_defaults(fn=_trl)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the result, one JSON object, to PATH")


def _print_report(args: argparse.Namespace) -> int:
    text = json.dumps(args.fn(args), indent=2, default=str)
    print(text)
    if getattr(args, "json", None):
        from alignjax.core import paths

        with paths.open(args.json, "w") as f:
            f.write(text + "\n")
    return 0
