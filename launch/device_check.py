"""The device check: what one NVIDIA GPU says about alignjax, as one table.

launch/device_check.sh installs the carried wheels, then runs this file. Each step is a
child process with a time limit of its own, so a step that fails or hangs costs only its
rows of the table:

  gpu_tests      the GPU-only tests: cuDNN attention and `dot_product` against the XLA
                 reference (values and gradients, padded and packed rows), a bf16 DPO step
  train_1b       `alignjax bench train`: DPO on a Llama-3.2-1B-shaped model (random init,
                 bf16 compute, 2048-token sequences packed, cuDNN attention)
  train_8b_lora  the same on Llama-3-8B with LoRA rank 16
  trl_1b         `alignjax bench trl`: TRL's DPOTrainer against alignjax on the 1B model

Each bench step runs in launch/device_measure.py, which adds to the bench's report (tokens/s,
step time, MFU) the peak device memory of its process (JAX's allocator; PyTorch's for TRL). `--dry-run` runs
every step at toy size on whatever JAX finds (the CPU), with XLA attention for cuDNN.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024**3

# The GPU-only tests and the table row each belongs to (a node id's prefix picks the row).
GPU_TESTS = {
    "cuDNN attention = XLA (values, grads; padded, packed)": [
        "tests/models/test_attention.py::test_cudnn_equals_reference_on_gpu"
    ],
    "dot_product attention = XLA (float32, bf16)": [
        "tests/models/test_attention.py::test_dot_product_equals_reference",
        "tests/models/test_attention_gpu.py",
    ],
    "bf16 DPO training step (cuDNN, packed) = float32 XLA": ["tests/train/test_bf16_step_gpu.py"],
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """One run's shapes: the device check's own, or the dry run's toy ones."""

    small: tuple[str, dict]  # (preset, preset_overrides): the 1B model
    large: tuple[str, dict]  # the 8B model trained with LoRA
    max_length: int  # tokens per sequence; a packed row holds 2 * max_length
    batch: int  # packed rows per step (bench train); pairs per step (bench trl)
    large_batch: int
    steps: int  # warm-up steps, then as many timed ones
    attention: str
    records: int
    timeouts: dict  # seconds per step


FULL = Sizes(
    small=("llama3.2-1b", {"vocab_size": 128256}),
    large=("llama3-8b", {}),
    max_length=2048,
    batch=4,
    large_batch=2,
    steps=3,
    attention="cudnn",
    records=256,
    timeouts={"gpu_tests": 90, "train_1b": 100, "train_8b_lora": 130, "trl_1b": 120},
)
_TOY_MODEL = {
    "num_hidden_layers": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TOY = Sizes(
    small=("tiny", _TOY_MODEL),
    large=("tiny", _TOY_MODEL),
    max_length=32,
    batch=2,
    large_batch=2,
    steps=1,
    attention="xla",
    records=16,
    timeouts={"gpu_tests": 240, "train_1b": 240, "train_8b_lora": 240, "trl_1b": 240},
)
LORA_RANK = 16


def write_pairs(path: str, n: int, max_length: int) -> None:
    """Plain-text pairs of ragged lengths (the byte tokenizer: a token a byte), so packed
    rows hold one pair or several and padding is what packing leaves."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]

    def text(chars: int) -> str:
        out = ""
        while len(out) < chars:
            out += rng.choice(words) + " "
        return out[:chars]

    with open(path, "w") as f:
        for _ in range(n):
            prompt = rng.randint(max_length // 16, max_length // 4)
            room = max_length - prompt - 4  # BOS, EOS and margin
            row = {
                "prompt": text(prompt),
                "chosen": " " + text(rng.randint(room // 4, room)),
                "rejected": " " + text(rng.randint(room // 4, room)),
            }
            f.write(json.dumps(row) + "\n")


def train_config(sizes: Sizes, data_path: str, lora: bool) -> dict:
    """DPO on random init: bf16 compute, packed rows, layers scanned and rematerialised."""
    preset, overrides = sizes.large if lora else sizes.small
    model = {
        "preset": preset,
        "preset_overrides": overrides,
        "dtype": "bfloat16",
        # A LoRA base is frozen: bf16 parameters halve its random init's host round trip.
        "param_dtype": "bfloat16" if lora else "float32",
        "scan_layers": True,
        "remat_policy": "minimal",
        "attention_backend": sizes.attention,
    }
    if lora:
        model["lora"] = {"rank": LORA_RANK, "alpha": 2 * LORA_RANK}
    return {
        "seed": 0,
        "model": model,
        "data": {
            "train": data_path,
            "max_length": sizes.max_length,
            "max_prompt_length": sizes.max_length // 2,
            "packing": True,
            "shuffle": False,
            "num_epochs": None,
            "check": False,
        },
        "loss": {"type": "sigmoid", "beta": 0.1},
        "optim": {"name": "adamw", "lr": 5.0e-7, "schedule": "constant"},
        "train": {"batch_size": sizes.large_batch if lora else sizes.batch},
    }


def run_child(name: str, argv: list[str], out_dir: str, timeout: int, env: dict) -> str | None:
    """Run one step's process, its output into OUT/NAME.log; None when it succeeded, else why not."""
    log_path = os.path.join(out_dir, f"{name}.log")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        # A session of its own: a step that times out is stopped with every process it started.
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"timed out after {timeout} s (log: {log_path})"
    print(f"device_check: {name}: {time.perf_counter() - start:.0f} s, exit {rc}", file=sys.stderr)
    if rc:
        with open(log_path) as f:
            lines = [line.strip() for line in f if line.strip()]
        last = lines[-1][:160] if lines else "no output"
        return f"exit {rc}: {last} (log: {log_path})"
    return None


@dataclasses.dataclass
class Check:
    """One run of the check: its sizes, output folder, children's environment and notes."""

    sizes: Sizes
    out_dir: str
    env: dict
    notes: list[str] = dataclasses.field(default_factory=list)
    _help: dict = dataclasses.field(default_factory=dict)

    def bench_help(self, what: str) -> str:
        """`alignjax bench WHAT --help`: which options this checkout's bench offers."""
        if what not in self._help:
            argv = [sys.executable, "-m", "alignjax.cli", "bench", what, "--help"]
            proc = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)
            self._help[what] = proc.stdout
        return self._help[what]

    def offers(self, what: str, flag: str) -> bool:
        return f"{flag} " in self.bench_help(what) or f"{flag}\n" in self.bench_help(what)


def junit_cases(path: str) -> list[dict]:
    """Each test case of a JUnit XML report: module, function, outcome and message."""
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = child.get("message") or (child.text or "").strip()
                break
        module = case.get("classname", "").split(".")[-1]
        cases.append(
            {
                "module": module,
                "name": case.get("name", "").split("[")[0],
                "outcome": outcome,
                "message": message,
            }
        )
    return cases


def _selects(node: str, case: dict) -> bool:
    path, _, function = node.partition("::")
    module = os.path.basename(path).removesuffix(".py")
    return case["module"] == module and (not function or case["name"] == function)


def tests_result(cases: list[dict]) -> str:
    """One row's value: how many passed, or why they failed or were skipped."""
    if not cases:
        return "failed: no test collected"
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    first = {k: next((c["message"] for c in cases if c["outcome"] == k), "") for k in counts}
    if counts["failed"]:
        return f"failed {counts['failed']} of {len(cases)}: {(first['failed'].splitlines() or [''])[0][:160]}"
    if not counts["passed"]:
        return f"skipped: {first['skipped']}"
    skipped = f"; skipped {counts['skipped']}: {first['skipped']}" if counts["skipped"] else ""
    return f"passed {counts['passed']} of {len(cases)}{skipped}"


def gpu_test_rows(check: Check) -> list[tuple[str, str]]:
    xml_path = os.path.join(check.out_dir, "gpu_tests.xml")
    if os.path.exists(xml_path):
        os.remove(xml_path)
    nodes = [node for group in GPU_TESTS.values() for node in group]
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml_path}", *nodes]
    failure = run_child("gpu_tests", argv, check.out_dir, check.sizes.timeouts["gpu_tests"], check.env)
    if not os.path.exists(xml_path):  # pytest exits 1 when a test fails: the report says which
        return [(f"GPU test: {label}", f"failed: {failure}") for label in GPU_TESTS]
    cases = junit_cases(xml_path)
    return [
        (f"GPU test: {label}", tests_result([c for c in cases if any(_selects(n, c) for n in group)]))
        for label, group in GPU_TESTS.items()
    ]


def _gib(value) -> float | None:
    return value / GIB if value is not None else None


def train_values(report: dict, peak: dict) -> list[tuple]:
    """(row, value, why it is missing, format) from a `bench train` report."""
    return [
        ("tokens/s", report.get("tokens_per_sec"), "the bench reported none", "{:,.0f}"),
        ("step time (s)", report.get("step_time_s"), "the bench reported none", "{:.3f}"),
        ("MFU", report.get("mfu"), f"no peak FLOP/s known for {report.get('device')!r}", "{:.1%}"),
        (
            "peak memory (GiB)",
            _gib(peak.get("jax")),
            f"{peak.get('platform')} reports no memory statistics",
            "{:.2f}",
        ),
    ]


def trl_values(report: dict, peak: dict) -> list[tuple]:
    """(row, value, why it is missing, format) from a `bench trl` report."""
    no_stats = f"{peak.get('platform')} reports no memory statistics"
    no_cuda = no_stats if peak.get("platform") != "gpu" else "PyTorch did not use CUDA (TRL ran on the CPU)"
    return [
        ("TRL tokens/s", report.get("trl_tokens_per_s"), "the bench reported none", "{:,.0f}"),
        ("TRL step time (s)", report.get("trl_step_s"), "the bench reported none", "{:.3f}"),
        ("alignjax tokens/s", report.get("alignjax_tokens_per_s"), "the bench reported none", "{:,.0f}"),
        (
            "alignjax / TRL tokens/s",
            report.get("alignjax_over_trl_tokens_per_s"),
            "the bench reported none",
            "{:.2f}",
        ),
        ("TRL peak memory (GiB)", _gib(peak.get("torch")), no_cuda, "{:.2f}"),
        ("alignjax peak memory (GiB)", _gib(peak.get("jax")), no_stats, "{:.2f}"),
    ]


def value_text(failure: str | None, value, why: str, fmt: str) -> str:
    if failure:
        return f"failed: {failure}"
    if not isinstance(value, (int, float)) or value != value:  # None, a string, NaN
        return f"skipped: {why}"
    return fmt.format(value)


def bench_rows(check: Check, name: str, label: str, bench_argv: list[str], values) -> list[tuple[str, str]]:
    """Run `alignjax BENCH_ARGV` through device_measure.py as step NAME; its rows, `LABEL: field`."""
    report_path = os.path.join(check.out_dir, f"{name}.json")
    if os.path.exists(report_path):
        os.remove(report_path)
    if check.offers(bench_argv[1], "--json"):
        bench_argv = [
            *bench_argv[:2],
            "--json",
            os.path.join(check.out_dir, f"{name}.bench.json"),
            *bench_argv[2:],
        ]
    argv = [sys.executable, os.path.join(REPO, "launch", "device_measure.py"), report_path, *bench_argv]
    env = dict(check.env)
    if name.startswith("trl"):  # TRL's PyTorch needs what JAX's preallocation would hold
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    failure = run_child(name, argv, check.out_dir, check.sizes.timeouts[name], env)
    result = {}
    if failure is None:
        with open(report_path) as f:
            result = json.load(f)
        if not result.get("report"):
            failure = f"no report in its output (log: {os.path.join(check.out_dir, name + '.log')})"
    return [
        (f"{label}: {field}", value_text(failure, value, why, fmt))
        for field, value, why, fmt in values(result.get("report") or {}, result.get("peak") or {})
    ]


def train_rows(check: Check, data_path: str, lora: bool) -> list[tuple[str, str]]:
    name = "train_8b_lora" if lora else "train_1b"
    config_path = os.path.join(check.out_dir, f"{name}.yaml")
    with open(config_path, "w") as f:
        json.dump(train_config(check.sizes, data_path, lora), f, indent=2)  # JSON is YAML
    label = f"train DPO Llama-3-8B LoRA r{LORA_RANK}" if lora else "train DPO Llama-3.2-1B"
    argv = ["bench", "train", "--steps", str(check.sizes.steps), config_path]
    return bench_rows(check, name, label, argv, train_values)


# What `bench trl` needs to run the 1B model as `bench train` does; passed where offered.
TRL_MODEL_FLAGS = ("--preset", "--preset-override", "--dtype", "--attention-backend")


def trl_rows(check: Check) -> list[tuple[str, str]]:
    sizes, label = check.sizes, "bench trl, DPO Llama-3.2-1B"
    missing = [flag for flag in TRL_MODEL_FLAGS if not check.offers("trl", flag)]
    if "--preset" in missing:
        why = "bench trl has no --preset option, so it runs only its own ~100M float32 model"
        return [(f"{label}: {field}", f"skipped: {why}") for field, *_ in trl_values({}, {})]
    if missing:
        check.notes.append(f"bench trl offers no {', '.join(missing)}: its defaults stand for them")
    preset, overrides = sizes.small
    argv = ["bench", "trl", "--batch-size", str(sizes.batch), "--max-length", str(sizes.max_length)]
    argv += ["--steps", str(sizes.steps), "--lengths", "ragged", "--preset", preset]
    if "--preset-override" not in missing:
        for key, value in overrides.items():
            argv += ["--preset-override", f"{key}={value}"]
    if "--dtype" not in missing:
        argv += ["--dtype", "bfloat16"]
    if "--attention-backend" not in missing:
        argv += ["--attention-backend", sizes.attention]
    return bench_rows(check, "trl_1b", label, argv, trl_values)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(row) for row, _ in rows)
    lines = [f"| {'check'.ljust(width)} | result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {row.ljust(width)} | {value} |" for row, value in rows]
    return "\n".join(lines)


def run_check(dry_run: bool, out_dir: str) -> int:
    """Every step in turn; prints the table (also OUT/table.md); 1 when a row failed."""
    sizes = TOY if dry_run else FULL
    os.makedirs(out_dir, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    if dry_run:
        env.setdefault("JAX_PLATFORMS", "cpu")
    else:  # gpu_train.sh's share: the rest of 0.9 is better spent on activations
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    check = Check(sizes, out_dir, env)
    data_path = os.path.join(out_dir, "pairs.jsonl")
    write_pairs(data_path, sizes.records, sizes.max_length)
    rows = gpu_test_rows(check)
    rows += train_rows(check, data_path, lora=False)
    rows += train_rows(check, data_path, lora=True)
    rows += trl_rows(check)
    kind = "dry run, toy sizes" if dry_run else "one GPU"
    header = (
        f"alignjax device check ({kind}): sequences of {sizes.max_length} tokens packed in rows of "
        f"{2 * sizes.max_length}, {sizes.batch} rows a step (8B LoRA: {sizes.large_batch}), "
        f"{sizes.steps} warm-up + {sizes.steps} timed steps; logs in {out_dir}"
    )
    text = "\n".join([header, "", table(rows), *(f"note: {n}" for n in check.notes)])
    print(text)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    return 1 if any(value.startswith("failed") for _, value in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="device_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every step at toy size, on the CPU")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "device_check"), help="logs and reports")
    args = parser.parse_args(argv)
    return run_check(args.dry_run, os.path.abspath(args.out))


if __name__ == "__main__":
    sys.exit(main())
