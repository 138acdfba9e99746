"""The `alignjax` command line."""

from __future__ import annotations

import argparse
import sys


def _convert(args: argparse.Namespace) -> int:
  from alignjax.convert import api

  if args.direction == "hf-to-orbax":
    step_dir = api.hf_to_orbax(args.src, args.dst, param_dtype=args.param_dtype, scan_layers=args.scan_layers)
    print(f"wrote Orbax checkpoint {step_dir}")
  else:
    files = api.orbax_to_hf(args.src, args.dst, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"wrote {len(files)} files to {args.dst}: {', '.join(files)}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="alignjax", description="Preference alignment for language models in JAX."
  )
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  convert = sub.add_parser("convert", help="convert between Hugging Face and Orbax checkpoints")
  convert.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
  convert.add_argument("src", help="HF model directory, or a checkpoint root / step directory")
  convert.add_argument("dst", help="output directory")
  convert.add_argument("--param-dtype", default="float32", help="hf-to-orbax: stored parameter dtype")
  convert.add_argument("--scan-layers", action="store_true", help="hf-to-orbax: store layers stacked for scan")
  convert.add_argument("--max-shard-gb", type=float, default=5.0, help="orbax-to-hf: safetensors shard size")
  convert.set_defaults(func=_convert)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, FileNotFoundError, KeyError) as e:
    print(f"alignjax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
