"""`alignjax train` with `model.hf_path` a Hub name, against the Hub server on 127.0.0.1."""

import json
import os
import signal
import subprocess

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
from hub_helpers import losses, run_config, train, upload, write_pairs
from safetensors.numpy import load_file

from alignjax.convert import model_checkpoint as mc


def test_a_hub_model_and_dataset_train_as_their_local_copies_online_and_offline(
    hub, tiny_model, tmp_path, monkeypatch, capsys
):
    from trl_harness import word_model

    upload(tiny_model, "org/tiny")
    other = word_model(tmp_path / "other", seed=1)
    dev_commit = upload(other, "org/tiny", revision="dev")
    pairs = write_pairs(tmp_path / "prefs" / "train.jsonl")
    upload(str(tmp_path / "prefs"), "org/prefs", repo_type="dataset")
    by_name = {"hf_path": "org/tiny", "revision": "dev"}

    assert train(run_config(tmp_path / "local", {"hf_path": other}, pairs)) == 0
    assert train(run_config(tmp_path / "hub", by_name, "hf:org/prefs")) == 0
    expected = losses(tmp_path / "local")
    assert sorted(expected) == [1, 2]
    np.testing.assert_allclose(
        list(losses(tmp_path / "hub").values()), list(expected.values()), rtol=0, atol=1e-6
    )
    with open(tmp_path / "hub" / "hub_revisions.json") as f:
        assert json.load(f) == {
            "model.hf_path": {"name": "org/tiny", "requested": "dev", "commit": dev_commit}
        }

    hub.stop()  # no network from here on: the cache serves
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert train(run_config(tmp_path / "offline", by_name, "hf:org/prefs")) == 0
    np.testing.assert_allclose(
        list(losses(tmp_path / "offline").values()), list(expected.values()), rtol=0, atol=1e-6
    )

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    capsys.readouterr()
    assert train(run_config(tmp_path / "no-cache", by_name, "hf:org/prefs")) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        "alignjax train: error: data.train[0].path: dataset org/prefs: HF_HUB_OFFLINE is set and "
        "the files are not in the cache"
    ), error
    assert train(run_config(tmp_path / "no-cache", by_name, pairs)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        "alignjax train: error: model.hf_path: model org/tiny at revision dev: HF_HUB_OFFLINE is set and "
        "the files are not in the cache"
    ), error
    assert not os.path.exists(tmp_path / "no-cache" / "checkpoints")


def _merged_export(run_dir, out_dir) -> dict:
    from alignjax import cli

    assert cli.main(["convert", "orbax-to-hf", str(run_dir / "checkpoints"), str(out_dir), "--merge"]) == 0
    return load_file(str(out_dir / "model.safetensors"))


def test_a_lora_run_keeps_its_base_commit_after_the_branch_moves(hub, tiny_model, tmp_path):
    from trl_harness import word_model

    first = upload(tiny_model, "org/tiny")
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    tree = run_config(tmp_path / "run", {"hf_path": "org/tiny", "lora": {"rank": 4, "alpha": 8}}, pairs)
    assert train(tree) == 0
    merged_before = _merged_export(tmp_path / "run", tmp_path / "merged-before")

    moved = upload(word_model(tmp_path / "newer", seed=2), "org/tiny")  # main now points elsewhere
    assert moved != first
    assert train(tree, "train.steps=3") == 0  # resumes at step 2, on the recorded commit
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]
    with open(tmp_path / "run" / "hub_revisions.json") as f:
        assert json.load(f)["model.hf_path"] == {"name": "org/tiny", "requested": None, "commit": first}
    root = str(tmp_path / "run" / "checkpoints")
    metas = {step: mc.load_meta(root, step)["lora"] for step in (2, 3)}
    assert metas[2]["base_revision"] == metas[3]["base_revision"] == first
    assert metas[2]["base_fingerprint"] == metas[3]["base_fingerprint"]
    assert metas[3]["base_model_name_or_path"] == "org/tiny"

    # --merge reads the base at the recorded commit: the export of step 2 is unchanged.
    from alignjax import cli

    step2 = str(tmp_path / "run" / "checkpoints" / "2")
    assert cli.main(["convert", "orbax-to-hf", step2, str(tmp_path / "merged-after"), "--merge"]) == 0
    merged_after = load_file(str(tmp_path / "merged-after" / "model.safetensors"))
    assert merged_after.keys() == merged_before.keys()
    for name, array in merged_before.items():
        np.testing.assert_array_equal(merged_after[name], array, err_msg=name)

    assert cli.main(["convert", "orbax-to-hf", step2, str(tmp_path / "adapter")]) == 0
    with open(tmp_path / "adapter" / "adapter_config.json") as f:
        adapter_config = json.load(f)
    assert (adapter_config["base_model_name_or_path"], adapter_config["revision"]) == ("org/tiny", first)


def test_a_push_without_a_token_stops_before_training(hub, tiny_model, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    tree = run_config(tmp_path / "run", {"hf_path": tiny_model}, pairs, logging={"push_to_hub": "org/out"})
    assert train(tree) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "alignjax train: error: logging.push_to_hub=org/out: pushing to the Hub needs a token with write "
        "access; set HF_TOKEN (or run hf auth login)"
    )
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


@pytest.mark.slow
def test_two_processes_train_one_hub_model_and_process_0_pushes_when_it_ends(
    hub, tiny_model, tmp_path, token
):
    """As on a pod of two hosts sharing one cache, the README's command: configs/dpo.yaml with
    a Hub model and a Hub dataset. Both processes resolve org/tiny and hf:org/prefs (each file
    downloaded once), train over fsdp=2 like one process on the local copies, and the
    finished run is pushed once, as its local export."""
    import portpicker
    import train_helpers as th
    from huggingface_hub import hf_hub_download
    from trl_harness import MAX_LENGTH, MAX_PROMPT_LENGTH

    from alignjax import cli

    upload(tiny_model, "org/tiny")
    pairs = write_pairs(tmp_path / "prefs" / "train.jsonl")
    upload(str(tmp_path / "prefs"), "org/prefs", repo_type="dataset")
    config = os.path.join(th.REPO, "configs", "dpo.yaml")
    small = [
        f"data.max_length={MAX_LENGTH}",
        f"data.max_prompt_length={MAX_PROMPT_LENGTH}",
        "train.steps=2",
        "train.batch_size=4",
        "train.log_every=1",
        "train.save_every=2",
        "optim.lr=3.0e-3",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
    ]
    local = [f"run_dir={tmp_path / 'local'}", f"model.hf_path={tiny_model}", f"data.train={pairs}"]
    assert cli.main(["train", config, *local, *small]) == 0
    by_name = [
        f"run_dir={tmp_path / 'pod'}",
        "model.hf_path=org/tiny",
        "data.train=hf:org/prefs",
        "logging.push_to_hub=org/out",
        "mesh.fsdp=2",
    ]
    port = portpicker.pick_unused_port()
    procs = [
        th.start(
            config,
            [*by_name, *small],
            log_path=str(tmp_path / f"process{i}.log"),
            env={
                "ALIGNJAX_COORDINATOR": f"127.0.0.1:{port}",
                "ALIGNJAX_NUM_PROCESSES": "2",
                "ALIGNJAX_PROCESS_ID": str(i),
                "PYTHONFAULTHANDLER": "1",
            },
        )
        for i in range(2)
    ]
    for i, proc in enumerate(procs):
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack to the log
            proc.wait(timeout=30)
        assert proc.returncode == 0, f"process {i}:\n{th.log_text(proc)[-8000:]}"

    np.testing.assert_allclose(
        list(losses(tmp_path / "pod").values()), list(losses(tmp_path / "local").values()), rtol=1e-5
    )
    assert hub.downloads("/model.safetensors") == 1  # one shared cache, no two writers
    assert hub.downloads("/train.jsonl") == 1
    commits = [path for method, path in hub.requests if method == "POST" and "/org/out/commit/" in path]
    assert len(commits) == 1, commits  # process 0 alone pushed

    export = tmp_path / "export"
    assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "pod" / "checkpoints"), str(export)]) == 0
    pushed = load_file(hf_hub_download("org/out", "model.safetensors"))
    local = load_file(str(export / "model.safetensors"))
    assert pushed.keys() == local.keys()
    for name, array in local.items():
        np.testing.assert_array_equal(pushed[name], array, err_msg=name)


@pytest.fixture(autouse=True)
def _no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
