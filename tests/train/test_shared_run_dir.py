"""Processes that do not share run_dir stop together before training, naming who does not see it.

Two local processes joined by jax.distributed (gloo) stand in for two hosts: given different
run_dirs, each sees only its own disk, as two TPU workers with a local run_dir would.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import portpicker
import pytest

import train_helpers as th
from alignjax.train.shared_dir import MARKER


def _distributed_env(port: int, process: int) -> dict:
    return {
        "ALIGNJAX_COORDINATOR": f"127.0.0.1:{port}",
        "ALIGNJAX_NUM_PROCESSES": "2",
        "ALIGNJAX_PROCESS_ID": str(process),
    }


def _wait_all(procs, timeout: float):
    """Wait for every process; one still running at the deadline is a hang (its stack is printed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    hung = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in hung:
        procs[i].send_signal(signal.SIGABRT)
        procs[i].wait(timeout=30)
    return hung


@pytest.mark.slow
def test_train_with_a_run_dir_per_process_stops_every_process_before_step_1(tmp_path, log_path):
    config = th.write_config(str(tmp_path / "config.yaml"), str(tmp_path / "unused"))
    run_dirs = [str(tmp_path / f"disk{i}" / "run") for i in range(2)]
    port = portpicker.pick_unused_port()
    procs = [
        th.start(
            config,
            [f"run_dir={run_dirs[i]}"],
            log_path=log_path(f"process{i}"),
            env={**_distributed_env(port, i), "PYTHONFAULTHANDLER": "1"},
        )
        for i in range(2)
    ]
    hung = _wait_all(procs, timeout=180)
    stacks = "\n".join(th.log_text(procs[i])[-6000:] for i in hung)
    assert not hung, f"processes {hung} hung:\n{stacks}"

    marker_0 = os.path.join(run_dirs[0], MARKER)
    marker_1 = os.path.join(run_dirs[1], MARKER)
    for i, proc in enumerate(procs):
        out = th.log_text(proc)
        assert proc.returncode == 2, f"process {i} exited {proc.returncode}:\n{out[-5000:]}"
        assert f"alignjax train: error: run_dir {run_dirs[i]!r} is not one directory that all 2" in out, out[
            -3000:
        ]
        # Both name the process that did not see it and where it looked, and say what to use.
        assert "process 1 (host " in out and f"{marker_1} does not exist there" in out, out[-3000:]
        assert "process 0 (host" not in out
        assert "run_dir=gs://" in out and "shared filesystem" in out and "bucket mounted on every host" in out
    # Stopped before anything was trained or written.
    for run_dir in run_dirs:
        assert sorted(os.listdir(run_dir)) == [], os.listdir(run_dir)
    assert not os.path.exists(marker_0)


SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from alignjax.core import sharding
    sharding.maybe_initialize_distributed()
    import jax
    from alignjax.train.shared_dir import check_shared_run_dir

    run_dir = json.loads(sys.argv[1])[jax.process_index()]
    try:
        check_shared_run_dir(run_dir)
        print(json.dumps({"process": jax.process_index(), "error": None}))
    except ValueError as e:
        print(json.dumps({"process": jax.process_index(), "error": str(e)}))
    """
)


def _check_in_two_processes(run_dirs):
    port = portpicker.pick_unused_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, json.dumps(run_dirs)],
            env=th.train_env(1, None, _distributed_env(port, i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError("the processes waited on each other") from None
        assert proc.returncode == 0, out[-4000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


def test_processes_sharing_run_dir_pass_and_leave_no_marker(tmp_path):
    shared = str(tmp_path / "shared")
    os.makedirs(shared)
    assert _check_in_two_processes([shared, shared]) == [
        {"process": 0, "error": None},
        {"process": 1, "error": None},
    ]
    assert os.listdir(shared) == []


def test_processes_sharing_a_bucket_run_dir_pass_and_leave_no_marker(gcs):
    run_dir = f"{gcs}/shared-run"
    assert _check_in_two_processes([run_dir, run_dir]) == [
        {"process": 0, "error": None},
        {"process": 1, "error": None},
    ]
    from alignjax.core import paths

    assert not paths.exists(paths.join(run_dir, MARKER))


def test_a_stale_marker_from_another_run_is_not_taken_for_a_shared_directory(tmp_path):
    """Process 1's directory holds a marker left by an earlier run: the token differs."""
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    for d in dirs:
        os.makedirs(d)
    with open(os.path.join(dirs[1], MARKER), "w") as f:
        f.write("0" * 32)
    outputs = _check_in_two_processes(dirs)
    assert [o["process"] for o in outputs] == [0, 1]
    for o in outputs:
        assert "process 1 (host " in o["error"]
        assert f"reads another run's file at {os.path.join(dirs[1], MARKER)}" in o["error"]
