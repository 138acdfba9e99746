"""`alignjax convert hf-to-orbax|orbax-to-hf SRC DST`: between Hugging Face models (a
directory, a bucket URL or a Hub name) and Orbax checkpoints (a LoRA run exports a PEFT
adapter, or merged weights with --merge); `--push-to-hub ORG/NAME` uploads an export with
its model card."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from alignjax.convert import api
from alignjax.core.errors import run_command
from alignjax.train.hub_export import export_and_push


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignjax convert", description="Convert between Hugging Face and Orbax checkpoints."
    )
    parser.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
    parser.add_argument(
        "src",
        help="hf-to-orbax: HF model directory or Hub name; orbax-to-hf: checkpoint root or step directory",
    )
    parser.add_argument("dst", help="output directory")
    parser.add_argument("--param-dtype", default="float32", help="hf-to-orbax: stored parameter dtype")
    parser.add_argument(
        "--scan-layers", action="store_true", help="hf-to-orbax: store layers stacked for scan"
    )
    parser.add_argument("--max-shard-gb", type=float, default=5.0, help="orbax-to-hf: safetensors shard size")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="orbax-to-hf of a LoRA run: full merged weights (base + adapters) instead of a PEFT adapter",
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="orbax-to-hf: upload the export, with a model card, to this repository",
    )
    parser.add_argument("--private", action="store_true", help="--push-to-hub: create the repository private")
    parser.add_argument(
        "--revision",
        help="hf-to-orbax: the Hub name's branch, tag or commit to read; "
        "orbax-to-hf --push-to-hub: the branch to push to (created if missing)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("convert", _convert, build_parser().parse_args(argv))


def _convert(args: argparse.Namespace) -> int:
    if args.direction == "hf-to-orbax":
        if args.push_to_hub or args.private:
            raise ValueError("--push-to-hub and --private are for orbax-to-hf")
        step_dir = api.hf_to_orbax(
            args.src,
            args.dst,
            param_dtype=args.param_dtype,
            scan_layers=args.scan_layers,
            revision=args.revision,
        )
        print(f"wrote Orbax checkpoint {step_dir}")
        return 0
    if args.revision and not args.push_to_hub:
        raise ValueError(
            "--revision with orbax-to-hf names the branch --push-to-hub pushes to; add --push-to-hub"
        )
    files, url = export_and_push(
        args.src,
        args.dst,
        args.push_to_hub,
        merge=args.merge,
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
        private=args.private,
        revision=args.revision,
    )
    print(f"wrote {len(files)} files to {args.dst}: {', '.join(files)}")
    if url:
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
