"""`alignjax eval --fidelity NAME`: each method's signature result on its built-in task,
measured against its baseline from finished training runs (docs/fidelity.md).

A reproduction is one module declaring NAME, HELP, `add_arguments(parser)` (the run
directories it compares, and its own options), `measure(args) -> table` (JSON-able;
`samples`, if present, goes to samples.jsonl instead), `report(table) -> lines` (what
is printed, the numbers docs/fidelity.md quotes) and `plot(table, path)` (the paper's
figure). Written to --out: table.json, samples.jsonl, fidelity.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from alignjax.errors import run_command
from alignjax.online.fidelity import cut, metaalign, mo_odpo, pdpo, sparsepo

REPRODUCTIONS: dict[str, ModuleType] = {m.NAME: m for m in (pdpo, metaalign, cut, mo_odpo, sparsepo)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignjax eval --fidelity",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[0],
    )
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, module in REPRODUCTIONS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.add_argument("--out", required=True, help="directory for table.json, samples.jsonl, fidelity.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("eval --fidelity", _run, args)


def _run(args: argparse.Namespace) -> int:
    module = REPRODUCTIONS[args.name]
    os.makedirs(args.out, exist_ok=True)
    table = module.measure(args)
    samples = table.pop("samples", None)
    if samples is not None:
        with open(os.path.join(args.out, "samples.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in samples)
    with open(os.path.join(args.out, "table.json"), "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1, ensure_ascii=False)
    module.plot(table, os.path.join(args.out, "fidelity.png"))
    for line in module.report(table):
        print(line)
    print(f"wrote {args.out}/table.json, fidelity.png" + (", samples.jsonl" if samples is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
