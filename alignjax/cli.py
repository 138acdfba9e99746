"""The `alignjax` command line."""

from __future__ import annotations

import argparse
import sys

from alignjax import quiet
from alignjax.errors import run_command


def _convert(args: argparse.Namespace) -> int:
    from alignjax.convert import api

    if args.direction == "hf-to-orbax":
        step_dir = api.hf_to_orbax(
            args.src, args.dst, param_dtype=args.param_dtype, scan_layers=args.scan_layers
        )
        print(f"wrote Orbax checkpoint {step_dir}")
    else:
        files = api.orbax_to_hf(
            args.src, args.dst, max_shard_bytes=int(args.max_shard_gb * 1024**3), merge=args.merge
        )
        print(f"wrote {len(files)} files to {args.dst}: {', '.join(files)}")
    return 0


def _describe(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from alignjax import configlib
    from alignjax.convert.loading import ModelSection, load_model
    from alignjax.models import decoder, head

    tree = configlib.load_yaml(args.config)
    for override in args.overrides:
        configlib.apply_override(tree, override)
    section = configlib.from_dict(ModelSection, tree.get("model", {}), "model")
    model = load_model(section, jax.random.key(int(tree.get("seed", 0))))
    cfg = model.cfg
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(model.params))
    print(
        f"model_type={cfg.model_type} layers={cfg.num_layers} hidden={cfg.hidden_size} "
        f"heads={cfg.num_heads}/{cfg.num_kv_heads} vocab={cfg.vocab_size} params={n_params:,}"
    )
    print(
        f"layer types: {', '.join(sorted(set(cfg.layer_types)))}; dtype={cfg.dtype} "
        f"scan={cfg.scan_layers} remat={cfg.remat_policy} attention={cfg.attention_backend}"
    )
    tokens = np.arange(16, dtype=np.int32)[None] % cfg.vocab_size
    hidden = decoder.apply(model.params, cfg, tokens, np.arange(16)[None], np.ones((1, 16), np.int32))
    logits = head.logits_BxLxV(model.params, cfg, hidden)
    print(
        f"forward pass ok: logits {tuple(logits.shape)}, finite={bool(np.isfinite(np.asarray(logits)).all())}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    import logging

    from alignjax.train.config import load_config
    from alignjax.train.loop import Preempted, run

    # force: importing Orbax lets absl configure logging first, which would hide INFO lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save bookkeeping
    cfg = load_config(args.config, args.overrides)
    try:
        summary = run(cfg)
    except Preempted as stop:
        print(f"preempted: checkpointed step {stop.step} in {cfg.run_dir}/checkpoints; rerun to resume")
        return 143
    print(f"finished at step {summary['step']}; run directory {cfg.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignjax", description="Preference alignment for language models in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.steps=100 mesh.fsdp=4")
    train.set_defaults(func=_train)

    convert = sub.add_parser("convert", help="convert between Hugging Face and Orbax checkpoints")
    convert.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
    convert.add_argument("src", help="HF model directory, or a checkpoint root / step directory")
    convert.add_argument("dst", help="output directory")
    convert.add_argument("--param-dtype", default="float32", help="hf-to-orbax: stored parameter dtype")
    convert.add_argument(
        "--scan-layers", action="store_true", help="hf-to-orbax: store layers stacked for scan"
    )
    convert.add_argument(
        "--max-shard-gb", type=float, default=5.0, help="orbax-to-hf: safetensors shard size"
    )
    convert.add_argument(
        "--merge",
        action="store_true",
        help="orbax-to-hf of a LoRA run: full merged weights (base + adapters) instead of a PEFT adapter",
    )
    convert.set_defaults(func=_convert)

    describe = sub.add_parser("describe", help="build a config's model and run one forward pass")
    describe.add_argument("config")
    describe.add_argument("overrides", nargs="*", metavar="key=value")
    describe.set_defaults(func=_describe)

    # Parsed by alignjax.plot itself; listed here so --help shows it.
    sub.add_parser("plot", help="draw a run's training curves to PNG (alignjax plot RUN_DIR)")
    sub.add_parser("bench", help="benchmarks: logps | data | generate | train | trl | quantize (alignjax bench WHAT --help)")
    sub.add_parser(
        "generate",
        help="sample from a trained model, prompted as in training (alignjax generate MODEL --prompt ...)",
    )
    sub.add_parser(
        "precompute-ref",
        help="compute reference log-probs once, for loss.reference: precomputed (alignjax precompute-ref CONFIG [key=value ...])",
    )
    sub.add_parser(
        "compile-check",
        help="compile each stage's step for a TPU topology or the local devices and report per-chip "
        "memory (alignjax compile-check CONFIG [key=value ...] [--topology v5p:2x2x1])",
    )
    sub.add_parser(
        "data",
        help="read every record of a config's data as training would and summarise it: bad records, "
        "lengths, truncation, batch efficiency (alignjax data check CONFIG [key=value ...] [--stage NAME])",
    )
    sub.add_parser(
        "eval",
        help="sweep weights / conditions / P-DPO users, score, Pareto plot, steerability (alignjax eval --help)",
    )
    return parser


# Commands that read a training config: every method must be registered first, the
# online ones (MO-ODPO, online CUT) included.
_CONFIG_COMMANDS = ("train", "precompute-ref", "bench", "compile-check", "data")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not (argv and argv[0] == "compile-check"):
        quiet.skip_absent_tpu()
    quiet.quiet_logs()
    if argv and argv[0] in _CONFIG_COMMANDS:
        import alignjax.online  # noqa: F401  (registers the online methods)
    if argv and argv[0] == "plot":
        from alignjax import plot

        return plot.main(argv[1:])
    if argv and argv[0] == "bench":
        from alignjax import bench

        return bench.main(argv[1:])
    if argv and argv[0] == "generate":
        from alignjax.online import generate_cli

        return generate_cli.main(argv[1:])
    if argv and argv[0] == "eval":
        from alignjax.online import evaluate

        return evaluate.main(argv[1:])
    if argv and argv[0] == "compile-check":
        from alignjax.train import compile_check

        return compile_check.main(argv[1:])
    if argv and argv[0] == "data":
        from alignjax.train import data_check

        return data_check.main(argv[1:])
    if argv and argv[0] == "precompute-ref":
        from alignjax.train import precompute

        return precompute.main(argv[1:])
    args = build_parser().parse_args(argv)
    return run_command(args.command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
