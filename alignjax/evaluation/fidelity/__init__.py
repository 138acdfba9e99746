"""The fidelity reproductions (`alignjax eval --fidelity NAME`): each method's signature
result on its built-in task, measured against its baseline from finished training runs
(docs/fidelity.md).

A reproduction is one module declaring NAME, HELP, `add_arguments(parser)` (the run
directories it compares, and its own options), `measure(args) -> table` (JSON-able;
`samples`, if present, goes to samples.jsonl instead), `report(table) -> lines` (what
is printed, the numbers docs/fidelity.md quotes) and `plot(table, path)` (the paper's
figure). Written to --out: table.json, samples.jsonl, fidelity.png.
"""

from __future__ import annotations

from types import ModuleType

from alignjax.evaluation.fidelity import cut, metaalign, mo_odpo, pdpo, sparsepo

REPRODUCTIONS: dict[str, ModuleType] = {m.NAME: m for m in (pdpo, metaalign, cut, mo_odpo, sparsepo)}
