"""docs/fidelity.md's CUT numbers are what its commands print: CUT and its SFT baseline are
trained again from scratch with the page's commands, measured again, and every number
must agree with the page."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from xla_flags import optimised_env

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DOCS = os.path.join(ROOT, "docs", "fidelity.md")


def section(name: str) -> str:
    with open(DOCS) as f:
        return f.read().split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


def page_rows(text: str) -> dict[str, list[float]]:
    """Markdown table rows whose cells after the first are numbers: first cell -> numbers."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 1 and all(re.fullmatch(r"-?[0-9.]+", c) for c in cells[1:]):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def page_commands(text: str) -> list[list[str]]:
    """The `alignjax ...` lines of the section's shell block, as argument lists."""
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("alignjax ")]


RUN_COMMANDS = """
import json, sys
from alignjax import cli
for argv in json.loads(sys.argv[1]):
    status = cli.main(argv)
    if status != 0:
        sys.exit(f"exit status {status} for {argv}")
"""


@pytest.mark.slow
def test_cut_reproduction_matches_the_page(tmp_path):
    text = section("CUT")
    rows = page_rows(text)
    commands = page_commands(text)
    assert [c[0] for c in commands] == ["train", "train", "eval"]
    for argv in commands:
        if argv[0] == "train":
            argv[1] = os.path.join(ROOT, argv[1])  # the config, from the checkout
    # Hundreds of steps: the compiler's optimisation passes pay for themselves here, and the
    # page's numbers were measured with them (tests/xla_flags.py). One process runs the
    # page's commands in turn; their relative run directories land in tmp_path.
    proc = subprocess.run(
        [sys.executable, "-c", RUN_COMMANDS, json.dumps(commands)],
        cwd=tmp_path,
        env=optimised_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = commands[-1][commands[-1].index("--out") + 1]
    with open(os.path.join(tmp_path, out, "table.json")) as f:
        table = json.load(f)
    flagging = table["flagging"]
    # Training on CPU is deterministic run to run; the tolerance allows for other BLAS builds.
    assert flagging["precision"] == pytest.approx(rows["flagged-token precision"][0], abs=0.03)
    assert flagging["recall"] == pytest.approx(rows["flagged-token recall"][0], abs=0.03)
    for name, label in (("sft", "error rate after SFT"), ("cut", "error rate after CUT")):
        greedy, sampled = rows[label]
        assert table["error_rate"][name]["greedy"] == pytest.approx(greedy, abs=0.05), name
        assert table["error_rate"][name]["sampled"] == pytest.approx(sampled, abs=0.05), name
