"""The online methods when a run spans several processes or devices: sampling is one program
over the run's mesh, each process's rows drawing what they draw on one device.

Processes are joined as `alignjax train` joins them (ALIGNJAX_COORDINATOR, gloo on CPU).
"""

import json
import os
import signal
import subprocess
import sys
import time

import portpicker
import pytest
import yaml

import train_helpers as th

HERE = os.path.dirname(os.path.abspath(__file__))


def _joined(i: int, port: int) -> dict:
    return {
        "ALIGNJAX_COORDINATOR": f"127.0.0.1:{port}",
        "ALIGNJAX_NUM_PROCESSES": "2",
        "ALIGNJAX_PROCESS_ID": str(i),
        "PYTHONFAULTHANDLER": "1",
    }


def _wait(procs, timeout: float) -> None:
    """Every process exits 0 within `timeout` seconds (hung ones are aborted, stacks shown)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    hung = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in hung:
        procs[i].send_signal(signal.SIGABRT)
        procs[i].wait(timeout=30)
    texts = [th.log_text(p) if getattr(p, "log_path", None) else "" for p in procs]
    stacks = "\n".join(texts[i][-6000:] for i in hung)
    assert not hung, f"processes {hung} hung:\n{stacks}"
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{texts[i][-6000:]}"


def _train_two(config, overrides, devices, cache_dir, tmp_path, name):
    port = portpicker.pick_unused_port()
    return [
        th.start(
            config,
            overrides,
            devices=devices,
            cache_dir=cache_dir,
            env=_joined(i, port),
            log_path=str(tmp_path / f"{name}-process{i}.log"),
        )
        for i in range(2)
    ]


def _sampling_run(meshes, processes, devices, out_dir, cache_dir) -> list[dict]:
    """mesh_sampling_run.py on `processes` processes of `devices` devices: per process, a dict
    of mesh name -> what it wrote."""
    port = portpicker.pick_unused_port()
    procs = []
    for i in range(processes):
        env = th.train_env(devices, cache_dir, _joined(i, port) if processes > 1 else None)
        log_path = os.path.join(out_dir, f"log{i}.txt")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "mesh_sampling_run.py"), out_dir, *meshes],
                cwd=th.REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc.log_path = log_path
        procs.append(proc)
    _wait(procs, 400)
    return [
        {m: json.load(open(os.path.join(out_dir, f"process{i}_{m}.json"))) for m in meshes}
        for i in range(processes)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "processes,devices,meshes",
    [
        # fsdp over the processes with one device each, then fsdp x tensor over both devices.
        (2, 2, ["1x2x1", "1x2x2"]),
        (1, 8, ["1x4x2", "2x4x1"]),
    ],
)
def test_each_process_samples_what_one_device_samples_for_its_rows(
    tmp_path, compile_cache, processes, devices, meshes
):
    """Each process's rows (a different number of prompts and prompt bucket per process)
    sampled in one program over the mesh equal what one device samples for them from a
    host copy of the parameters with that process's key, greedily and at temperature 1;
    also when another process has no prompts and only takes part."""
    runs = _sampling_run(meshes, processes, devices, str(tmp_path), compile_cache)
    for process, by_mesh in enumerate(runs):
        for mesh, out in by_mesh.items():
            what = f"process {process}, mesh {mesh}"
            assert out["count"] == processes and out["devices"] == processes * devices
            assert out["greedy"] == out["greedy_one_device"], what
            assert out["sampled"] == out["sampled_one_device"], what
            assert out["sampled"] != out["greedy"], f"{what}: temperature 1 drew the greedy tokens"
            lengths = {len(row) for row in out["greedy"] + out["sampled"]}
            assert len(lengths) > 1, f"{what}: every row ran to the same length {lengths}"
            # Rows over data x fsdp, key/value heads over tensor.
            data, fsdp, _ = (int(n) for n in mesh.split("x"))
            assert out["cache_spec"] == str((None, ("data", "fsdp"), None, "tensor", None)), (
                f"{what}: KV cache laid out as {out['cache_spec']}"
            )
            assert out["rows"] % (data * fsdp // processes) == 0
            assert out["joined"] == ([] if process == 0 else out["sampled_one_device"]), what
    if processes == 2:
        assert runs[0][meshes[0]]["greedy"] != runs[1][meshes[0]]["greedy"]


def _mo_odpo_config(tmp_path, name, steps, save_every=100, sft_steps=0) -> tuple[str, str]:
    """MO-ODPO from a fresh tiny model (the reference is the initial policy), or after
    `sft_steps` of SFT (the reference is the SFT policy) when that is not 0."""
    run_dir = str(tmp_path / name)
    cfg = th.tiny_config(run_dir)
    cfg["data"] = {
        "builtin": "weighted_style",
        "train": "builtin:prompts",
        "max_length": 64,
        "max_prompt_length": 48,
        "templates": {"weights": "Objective weights: brevity {brevity:.0%}, keyword {keyword:.0%}."},
    }
    cfg["loss"] = {
        "type": "mo_odpo",
        "beta": 0.3,
        "mo_odpo": {
            "rewards": [
                {"name": "length", "unit": "chars", "target": 0, "scale": 0.3333},
                {"name": "keyword_count", "keywords": ["ok"], "whole_word": True, "cap": 4},
            ],
            "num_samples": 2,
            "max_new_tokens": 12,
            "grid": 4,
        },
    }
    cfg["train"].update(steps=sft_steps + steps, save_every=save_every, batch_size=4)
    del cfg["stages"]
    if sft_steps:
        sft = {"loss.type": "sft", "data.record_type": "sft", "data.train": "builtin:sft"}
        cfg["stages"] = [
            {"name": "sft", **sft, "train.steps": sft_steps},
            {"name": "mo_odpo", "train.steps": steps},
        ]
    path = str(tmp_path / f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path, run_dir


@pytest.mark.slow
def test_mo_odpo_on_two_processes_killed_mid_stage_resumes_to_the_same_parameters(tmp_path, compile_cache):
    """Two processes (one device each, fsdp=2) train SFT then MO-ODPO to the end; killed
    after the first checkpoint of the online stage and restarted, the same run samples,
    scores and trains on what the uninterrupted run did, to the same parameters."""
    sft_steps, steps, fsdp = 2, 4, ["mesh.fsdp=2"]
    total = sft_steps + steps
    reference, reference_dir = _mo_odpo_config(tmp_path, "uninterrupted", steps, 2, sft_steps)
    _wait(_train_two(reference, fsdp, 1, compile_cache, tmp_path, "uninterrupted"), 300)
    config, run_dir = _mo_odpo_config(tmp_path, "killed", steps, 2, sft_steps)
    procs = _train_two(config, fsdp, 1, compile_cache, tmp_path, "killed")
    th.wait_for_checkpoint(procs[0], run_dir, sft_steps + 2, timeout=240)
    for proc in procs:
        th.kill(proc, signal.SIGKILL)
    assert total not in th.finalized_steps(run_dir)
    _wait(_train_two(config, fsdp, 1, compile_cache, tmp_path, "resumed"), 300)

    expected, losses = th.losses(reference_dir), th.losses(run_dir)
    assert sorted(expected) == sorted(losses) == list(range(1, total + 1))
    th.assert_losses_match(losses, expected, range(1, total + 1), 1e-6, "resumed 2-process SFT + MO-ODPO")
    step, params = th.final_params(run_dir)
    _, expected_params = th.final_params(reference_dir)
    assert step == total
    th.assert_trees_close(params, expected_params, 1e-6, "2-process MO-ODPO after a kill in the online stage")
    assert os.path.isdir(os.path.join(run_dir, "reference", "mo_odpo"))  # the SFT policy, frozen
    pairs = [r["online/pairs"] for r in th.metrics(reference_dir) if "online/pairs" in r]
    assert len(pairs) == steps and min(pairs) > 0


@pytest.mark.slow
def test_online_cut_trains_on_two_processes_of_two_devices(tmp_path, compile_cache):
    """Online CUT with fsdp=2 x tensor=2 over two processes of two devices each."""
    run_dir = str(tmp_path / "cut")
    overrides = [
        f"run_dir={run_dir}",
        "model.preset_overrides={num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128}",
        "data.train=builtin:train",
        "train.steps=2",
        "train.batch_size=4",
        "train.log_every=1",
        (
            "loss.cut.judge={name: threshold, reward: {name: length, unit: chars}, threshold: 20, "
            "critique: Too long.}"
        ),
        "loss.cut.sampling={max_new_tokens: 12}",
        "mesh.fsdp=2",
        "mesh.tensor=2",
    ]
    config = os.path.join(th.REPO, "configs", "cut.yaml")
    _wait(_train_two(config, overrides, 2, compile_cache, tmp_path, "cut"), 300)
    records = [r for r in th.metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(0 <= r["online/judged_negative"] <= 1 for r in records)
    step, _ = th.final_params(run_dir)
    assert step == 2
