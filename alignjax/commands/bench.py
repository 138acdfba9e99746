"""`alignjax bench WHAT`: the numbers the README records, measured by code, not tests.

logps     compiled memory of naive vs chunked log-probs (value and gradient)
data      Grain pipeline throughput (examples/s, tokens/s) on synthetic pairs
generate  sampler throughput (prefill and decode tokens/s) on a tiny model; --mixed: rows of
          mixed lengths against transformers' generate
train     training-step throughput of a config (tokens/s, step time, MFU where known)
trl       step time of alignjax and of TRL's DPOTrainer on the same ~100M model and data
quantize  logits error of an NF4 / int8 base (QLoRA) against the full-precision base
"""

from __future__ import annotations

import argparse
import json
import time

from alignjax.core.configlib import apply_override
from alignjax.core.errors import run_command


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
    """Time `args.steps` steps of a config after as many warm-up steps (compilation excluded)."""
    import tempfile

    from alignjax.models.flops import FORMULA
    from alignjax.train.config import load_config
    from alignjax.train.loop import run

    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            *args.overrides,
            f"run_dir={run_dir}",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "train.save_every=1000000",
            "data.eval=null",
            # Two windows of `steps` steps: the first includes compilation, the second is timed.
            f"train.log_every={args.steps}",
            f"train.steps={2 * args.steps}",
            "stages=null",
        ]
        cfg = load_config(args.config, overrides)
        start = time.perf_counter()
        run(cfg)
        total = time.perf_counter() - start
        with open(f"{run_dir}/metrics.jsonl") as f:
            records = [json.loads(line) for line in f]
    last = records[-1]
    out = {
        "config": args.config,
        "steps": args.steps,
        "wall_s_including_compile": total,
        "tokens_per_sec": last.get("tokens_per_sec"),
        "step_time_s": last.get("step_time_s"),
        "mfu": last.get("mfu"),
        "model_flops_per_step": last.get("model_flops_per_step"),
        "flops_formula": FORMULA,
        "device": __import__("jax").devices()[0].device_kind,
        "loss": last.get("loss"),
    }
    return out


def _trl(args) -> dict:
    from alignjax.train.bench_trl import bench_vs_trl

    return bench_vs_trl(args.batch_size, args.max_length, args.steps)


def _quantize(args) -> dict:
    """A Hugging Face model directory, or a preset initialised as `model.preset` runs are."""
    import jax
    import numpy as np

    from alignjax.convert.loading import ModelSection, load_model
    from alignjax.core import hub
    from alignjax.models.quantize_error import logits_error

    overrides: dict = {}
    for kv in args.override:  # config.json keys, parsed as config overrides are
        apply_override(overrides, kv)
    resolved = None
    if args.hf_path:
        resolved = hub.resolve(
            args.hf_path, revision=args.revision, key="--hf-path", revision_key="--revision"
        )
        section = ModelSection(hf_path=resolved.local_dir if resolved else args.hf_path)
    else:
        section = ModelSection(preset=args.preset, preset_overrides=overrides)
    loaded = load_model(section, jax.random.key(args.seed))
    vocab = loaded.cfg.vocab_size
    tokens = np.random.default_rng(args.seed).integers(0, vocab, size=(args.batch, args.length))
    model = {"hf_path": args.hf_path} if args.hf_path else {"preset": args.preset, "overrides": overrides}
    if resolved is not None:
        model["revision"] = resolved.commit
    report = {"model": model, "token_source": "uniformly random token ids", "seed": args.seed}
    report["results"] = [logits_error(loaded.params, loaded.cfg, tokens, kind) for kind in args.kinds]
    return report


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
    p.set_defaults(fn=_train)
    p = sub.add_parser(
        "trl", help="step time of alignjax vs TRL's DPOTrainer on one ~100M model (needs the test extra)"
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.set_defaults(fn=_trl)
    p = sub.add_parser("quantize", help="logits error of an NF4 / int8 base against the full-precision one")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-path", help="a Hugging Face model directory (local or gs://), or a Hub name")
    p.add_argument("--revision", help="a Hub name's branch, tag or commit (default: its default branch)")
    src.add_argument("--preset", help="a preset, initialised as model.preset runs are")
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE of the preset's config.json")
    p.add_argument("--kinds", nargs="+", default=["nf4", "int8"], choices=["nf4", "int8"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_quantize)
    args = parser.parse_args(argv)
    return run_command("bench", _print_report, args)


def _print_report(args: argparse.Namespace) -> int:
    print(json.dumps(args.fn(args), indent=2, default=str))
    return 0
