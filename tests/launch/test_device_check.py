"""launch/device_check.sh, its table and parsers, and launch/device_wheels.sh."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"

ROWS = [
    "GPU test: cuDNN attention = XLA (values, grads; padded, packed)",
    "GPU test: dot_product attention = XLA (float32, bf16)",
    "GPU test: bf16 DPO training step (cuDNN, packed) = float32 XLA",
    *(
        f"{bench}: {field}"
        for bench in ("train DPO Llama-3.2-1B", "train DPO Llama-3-8B LoRA r16")
        for field in ("tokens/s", "step time (s)", "MFU", "peak memory (GiB)")
    ),
    *(
        f"bench trl, DPO Llama-3.2-1B: {field}"
        for field in (
            "TRL tokens/s",
            "TRL step time (s)",
            "alignjax tokens/s",
            "alignjax / TRL tokens/s",
            "TRL peak memory (GiB)",
            "alignjax peak memory (GiB)",
        )
    ),
]
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?%?$")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _table(stdout: str) -> dict[str, str]:
    """{check: result} of the printed table's body."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    return dict(tuple(cell.strip() for cell in line.strip("|").split(" | ", 1)) for line in lines)


@pytest.mark.slow
def test_dry_run_prints_every_row(tmp_path):
    env = {**os.environ, "DEVICE_CHECK_DRY_RUN": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        ["bash", str(LAUNCH / "device_check.sh"), "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run, toy sizes" in result.stdout
    rows = _table(result.stdout)
    assert list(rows) == ROWS
    for row, value in rows.items():
        ok = (
            NUMBER.match(value)
            or value.startswith(("passed ", "skipped: "))
            and len(value) > len("skipped: x")
        )
        assert ok, f"{row}: {value!r}"
    # Numbers where the CPU has them: throughput and step time of both training benches.
    for bench in ("train DPO Llama-3.2-1B", "train DPO Llama-3-8B LoRA r16"):
        assert float(rows[f"{bench}: tokens/s"].replace(",", "")) > 0
        assert float(rows[f"{bench}: step time (s)"]) > 0
    # TRL's DPOTrainer on the same preset, against alignjax: numbers too.
    for field in ("TRL tokens/s", "TRL step time (s)", "alignjax / TRL tokens/s"):
        assert float(rows[f"bench trl, DPO Llama-3.2-1B: {field}"].replace(",", "")) > 0, field
    assert rows[ROWS[0]] == "skipped: needs an NVIDIA GPU"
    assert rows[ROWS[1]].startswith("passed 2 of 4")  # float32 runs on the CPU, bf16 needs a GPU
    assert (tmp_path / "out" / "table.md").read_text().strip() in result.stdout


def test_junit_report_gives_each_row_its_outcome(tmp_path):
    check = _load("device_check")
    (tmp_path / "r.xml").write_text(
        """<testsuites><testsuite>
        <testcase classname="tests.models.test_attention" name="test_cudnn_equals_reference_on_gpu[None]"/>
        <testcase classname="tests.models.test_attention" name="test_cudnn_equals_reference_on_gpu[7]">
          <failure message="AssertionError: Not equal to tolerance">trace</failure></testcase>
        <testcase classname="tests.models.test_attention" name="test_dot_product_equals_reference[None]"/>
        <testcase classname="tests.models.test_attention_gpu" name="test_dot_product_bf16_equals_reference_on_gpu[7]">
          <skipped type="pytest.skip" message="needs an NVIDIA GPU"/></testcase>
        <testcase classname="tests.train.test_bf16_step_gpu" name="test_bf16_cudnn_step_matches_float32_xla">
          <skipped type="pytest.skip" message="needs an NVIDIA GPU"/></testcase>
        </testsuite></testsuites>"""
    )
    cases = check.junit_cases(str(tmp_path / "r.xml"))
    results = [
        check.tests_result([c for c in cases if any(check._selects(n, c) for n in group)])
        for group in check.GPU_TESTS.values()
    ]
    assert results == [
        "failed 1 of 2: AssertionError: Not equal to tolerance",
        "passed 1 of 2; skipped 1: needs an NVIDIA GPU",
        "skipped: needs an NVIDIA GPU",
    ]
    assert check.tests_result([]) == "failed: no test collected"


def test_bench_reports_become_rows():
    check = _load("device_check")
    report = {"tokens_per_sec": 12345.6, "step_time_s": 0.5, "mfu": None, "device": "cpu"}
    rows = [check.value_text(None, *v[1:]) for v in check.train_values(report, {"jax": 3 * 2**30})]
    assert rows == ["12,346", "0.500", "skipped: no peak FLOP/s known for 'cpu'", "3.00"]
    failed = [check.value_text("timed out after 9 s", *v[1:]) for v in check.trl_values({}, {})]
    assert failed == ["failed: timed out after 9 s"] * 6
    trl = {"trl_tokens_per_s": 100.0, "alignjax_over_trl_tokens_per_s": 2.5}
    peak = {"jax": None, "torch": None, "platform": "gpu"}
    values = {v[0]: check.value_text(None, *v[1:]) for v in check.trl_values(trl, peak)}
    assert values["alignjax / TRL tokens/s"] == "2.50"
    assert values["TRL peak memory (GiB)"] == "skipped: PyTorch did not use CUDA (TRL ran on the CPU)"


def test_measure_finds_the_report_among_log_lines():
    measure = _load("device_measure")
    text = "step 1 {'loss': 0.69}\n{'loss': '0.6982'}\n{\n  \"a\": 1\n}\nlog {x}\n{\n  \"b\": {\"c\": 2}\n}\ntail\n"
    assert measure.last_json_object(text) == {"b": {"c": 2}}
    assert measure.last_json_object("no report\n") is None


FAKE_PIP = r"""
import os, sys
args = sys.argv[1:]
dest = args[args.index("--dest") + 1]
with open(os.path.join(os.environ["FAKE_PIP_LOG"]), "w") as f:
    f.write("\n".join(args))
size = int(os.environ["FAKE_WHEEL_BYTES"])
for spec in (a for a in args if "==" in a):
    name, version = spec.split("==")
    with open(os.path.join(dest, f"{name.replace('-', '_')}-{version}-py3-none-any.whl"), "wb") as f:
        f.write(b"\0" * size)
"""


def _wheels(tmp_path, wheel_bytes):
    python = tmp_path / "python"
    python.write_text(f"#!{sys.executable}\nimport sys\nsys.argv = sys.argv[2:]\n{FAKE_PIP}")
    python.chmod(0o755)
    env = {**os.environ, "FAKE_PIP_LOG": str(tmp_path / "pip_args"), "FAKE_WHEEL_BYTES": str(wheel_bytes)}
    return subprocess.run(
        ["bash", str(LAUNCH / "device_wheels.sh"), "--dest", str(tmp_path / "whl"), "--python", str(python)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wheels_are_fetched_for_the_device_python_without_dependencies(tmp_path):
    result = _wheels(tmp_path, 1000)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "pip_args").read_text().splitlines()
    assert args[:2] == ["download", "--quiet"]
    assert {"--no-deps", "--only-binary=:all:"} <= set(args)
    assert args[args.index("--python-version") + 1] == "3.12"
    assert "manylinux2014_x86_64" in args
    names = {a.split("==")[0].lower() for a in args if "==" in a}
    assert {"grain", "array-record", "datasets", "trl", "tensorboardx"} <= names
    assert "8 wheels, 8000 bytes" in result.stdout


def test_wheels_over_64_mib_fail(tmp_path):
    result = _wheels(tmp_path, 9 * 2**20)  # 8 wheels of 9 MiB
    assert result.returncode == 2
    assert "over the 64 MiB limit" in result.stderr
