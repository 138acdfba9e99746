"""Run `alignjax train` in subprocesses and read back what the runs leave behind.

Every run is a real CLI process (`python -m alignjax.cli train`), so device counts
(XLA_FLAGS), signals and multi-process initialisation behave as they do for a user.
Runs of one test session share a persistent compilation cache: a resumed run then
spends its time training, not compiling the same step again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import yaml
from xla_flags import with_fast_compile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# SFT then DPO (MetaAlign's recipe) on the built-in task, small enough for two CPU cores.
SFT_STEPS, DPO_STEPS = 8, 12
TOTAL_STEPS = SFT_STEPS + DPO_STEPS
SAVE_EVERY = 4  # checkpoints at 4, 8 (end of SFT), 12, 16, 20


def write_lora_config(root, name: str, lora: dict) -> tuple[str, str]:
    """(config path, run_dir) of `tiny_config` with `model.lora` set, written under root."""
    run_dir = os.path.join(str(root), name)
    cfg = tiny_config(run_dir)
    cfg["model"]["lora"] = lora
    path = os.path.join(str(root), f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path, run_dir


def tiny_config(run_dir: str) -> dict:
    return {
        "run_dir": run_dir,
        "seed": 0,
        "model": {
            "preset": "tiny",
            "preset_overrides": {
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
        },
        "data": {
            "builtin": "conditioned_style",
            "train": "builtin:train",
            # Evaluated at the end of DPO, on two batches (per-pair values gathered to the host).
            "eval": {"heldout": "builtin:eval"},
            "max_length": 128,
            "max_prompt_length": 64,
            "condition_field": "condition",
            "templates": {"user_info": "{user_info}\n{prompt}"},
        },
        "loss": {"type": "sigmoid", "beta": 0.1},
        "optim": {"name": "adamw", "lr": 1.0e-3, "schedule": "cosine", "warmup_steps": 2},
        "train": {
            "batch_size": 8,
            "eval_batches": 2,
            "log_every": 1,
            "save_every": SAVE_EVERY,
            "keep_checkpoints": 10,
            "steps": TOTAL_STEPS,
        },
        "logging": {"tensorboard": False, "progress_bar": False},
        "stages": [
            {
                "name": "sft",
                "loss.type": "sft",
                "data.record_type": "sft",
                "data.train": "builtin:sft",
                "data.eval": None,
                "train.steps": SFT_STEPS,
            },
            {"name": "dpo", "train.steps": DPO_STEPS},
        ],
    }


def write_config(path: str, run_dir: str) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(tiny_config(run_dir), f)
    return path


def train_env(devices: int, cache_dir: str | None, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("ALIGNJAX_COORDINATOR", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = with_fast_compile(f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env.update(extra or {})
    return env


def command(config: str, overrides=()) -> list[str]:
    return [sys.executable, "-m", "alignjax.cli", "train", config, *overrides]


def start(config: str, overrides=(), *, devices=1, cache_dir=None, env=None, log_path=None):
    """Popen of one training process; stdout and stderr go to `log_path` (read with `log_text`)."""
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        command(config, overrides),
        cwd=REPO,
        env=train_env(devices, cache_dir, env),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log_path = log_path
    return proc


def log_text(proc) -> str:
    if not getattr(proc, "log_path", None):
        return ""
    with open(proc.log_path) as f:
        return f.read()


def run(
    config: str, overrides=(), *, devices=1, cache_dir=None, env=None, log_path=None, expect_rc=0, timeout=240
) -> str:
    """Run to the end; fail with the run's own output when the exit code is not `expect_rc`."""
    proc = start(config, overrides, devices=devices, cache_dir=cache_dir, env=env, log_path=log_path)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_text(proc)
    assert proc.returncode == expect_rc, (
        f"alignjax train exited {proc.returncode}, expected {expect_rc}:\n{text[-6000:]}"
    )
    return text


def finalized_steps(run_dir: str) -> list[int]:
    """Steps whose checkpoint Orbax has committed: locally, the temporary directory was renamed;
    in a bucket (no rename), the step's commit marker was written last."""
    from alignjax.core import paths

    root = paths.join(run_dir, "checkpoints")
    if not paths.isdir(root):
        return []
    steps = [int(d) for d in paths.listdir(root) if d.isdigit()]
    if paths.is_remote(root):
        steps = [s for s in steps if paths.exists(paths.join(root, str(s), "commit_success.txt"))]
    return sorted(steps)


def wait_for_checkpoint(proc, run_dir: str, step: int, timeout: float = 120.0) -> int:
    """Poll until a checkpoint at >= `step` is committed; returns the newest such step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [s for s in finalized_steps(run_dir) if s >= step]
        if done:
            return max(done)
        if proc.poll() is not None:
            raise AssertionError(
                f"run exited {proc.returncode} before checkpointing step {step}:\n{log_text(proc)[-4000:]}"
            )
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no checkpoint at step >= {step} within {timeout}s:\n{log_text(proc)[-4000:]}")


def kill(proc, sig=signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=60)


def metrics(run_dir: str) -> list[dict]:
    from alignjax.core import paths

    with paths.open(paths.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(run_dir: str) -> dict[int, float]:
    """step -> training loss; a step logged twice (a resumed run) is an error."""
    out = {}
    for record in metrics(run_dir):
        if "loss" not in record:
            continue
        assert record["step"] not in out, f"step {record['step']} logged twice in {run_dir}/metrics.jsonl"
        out[record["step"]] = record["loss"]
    return out


def eval_metrics(run_dir: str) -> dict[str, float]:
    """The eval/ metrics of the run's one eval (end of DPO)."""
    records = [r for r in metrics(run_dir) if any(k.startswith("eval/") for k in r)]
    assert len(records) == 1, f"expected one eval record in {run_dir}/metrics.jsonl, got {len(records)}"
    return {k: v for k, v in records[0].items() if k.startswith("eval/")}


def final_params(run_dir: str, step: int | None = None):
    """Parameters of the newest (or the given) checkpoint, as NumPy."""
    from alignjax.convert import model_checkpoint as mc
    from alignjax.core import paths

    root = paths.join(run_dir, "checkpoints")
    if step is None:
        root, step = mc.resolve(root)
    return step, mc.load_params(root, step, as_numpy=True)


def assert_trees_close(actual, expected, atol: float, what: str) -> None:
    import jax

    a_leaves = jax.tree_util.tree_leaves_with_path(actual)
    e_leaves = jax.tree_util.tree_leaves_with_path(expected)
    assert [p for p, _ in a_leaves] == [p for p, _ in e_leaves], f"{what}: parameter trees differ"
    worst = max(
        (float(np.max(np.abs(np.asarray(a) - np.asarray(e)))), jax.tree_util.keystr(p))
        for (p, a), (_, e) in zip(a_leaves, e_leaves)
    )
    assert worst[0] <= atol, f"{what}: max |diff| {worst[0]:.3g} at {worst[1]} > {atol}"


def assert_losses_match(actual: dict, expected: dict, steps, atol: float, what: str) -> None:
    missing = [s for s in steps if s not in actual or s not in expected]
    assert not missing, f"{what}: steps {missing} not logged (actual has {sorted(actual)})"
    diffs = {s: abs(actual[s] - expected[s]) for s in steps}
    bad = {s: (actual[s], expected[s]) for s, d in diffs.items() if not d <= atol}
    assert not bad, f"{what}: losses differ by more than {atol} at steps {bad}"


def assert_run_matches(run_dir: str, reference, atol: float, what: str) -> int:
    """Every step logged once, and the losses, final parameters and eval of the run at
    `run_dir` within `atol` of `reference` (conftest's ReferenceRun); returns the final step."""
    steps = range(1, TOTAL_STEPS + 1)
    actual = losses(run_dir)  # fails on a step logged twice
    assert sorted(actual) == list(steps), f"{what}: logged steps {sorted(actual)}"
    assert_losses_match(actual, reference.losses, steps, atol, what)
    step, params = final_params(run_dir)
    assert step == TOTAL_STEPS, f"{what}: last checkpoint at step {step}"
    assert_trees_close(params, reference.final_params, atol, f"{what}: final parameters")
    assert_eval_match(run_dir, reference.run_dir, atol, f"{what}: eval")
    return step


def saved_specs(item_dir: str) -> dict[str, tuple]:
    """Parameter path -> (mesh axis sizes, partition spec) as Orbax recorded them at save."""
    import jax
    import orbax.checkpoint as ocp

    metadata = ocp.PyTreeCheckpointer().metadata(item_dir)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        recorded = leaf.sharding
        out[jax.tree_util.keystr(path)] = (
            dict(zip(recorded.axis_names, (int(n) for n in recorded.shape))),
            tuple(recorded.partition_spec),
        )
    return out


def assert_eval_match(run_dir: str, reference_dir: str, atol: float, what: str, rtol: float = 0.0) -> None:
    actual, expected = eval_metrics(run_dir), eval_metrics(reference_dir)
    assert sorted(actual) == sorted(expected), f"{what}: eval metrics {sorted(actual)} vs {sorted(expected)}"
    assert "eval/heldout/rewards/accuracies" in expected and "eval/heldout/loss" in expected, sorted(expected)
    bad = {
        k: (actual[k], expected[k])
        for k in expected
        if not abs(actual[k] - expected[k]) <= atol + rtol * abs(expected[k])
    }
    assert not bad, f"{what}: eval metrics differ by more than {atol} (+ {rtol} relative): {bad}"
