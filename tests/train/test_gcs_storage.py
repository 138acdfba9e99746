"""Training with Cloud Storage: a `gs://` run directory, model and data, against a real GCS
JSON API server on 127.0.0.1 (tests/gcs_emulator.py). The training processes reach it
through the storage clients' standard endpoint settings, as they would reach a bucket."""

import json
import signal
import uuid

import pytest
import yaml

import train_helpers as th
from alignjax.core import paths
from gcs_emulator import upload_dir


@pytest.mark.slow
def test_sigkill_with_a_bucket_run_dir_resumes_to_the_uninterrupted_run(
    reference_run, gcs, tmp_path, log_path, compile_cache
):
    run_dir = f"{gcs}/run-{uuid.uuid4().hex[:8]}"
    config = th.write_config(str(tmp_path / "config.yaml"), run_dir)
    tensorboard = ["logging.tensorboard=true"]

    proc = th.start(config, tensorboard, cache_dir=compile_cache, log_path=log_path("first"))
    th.wait_for_checkpoint(proc, run_dir, th.SFT_STEPS + th.SAVE_EVERY, timeout=240)
    assert proc.poll() is None, f"run ended before it could be killed:\n{th.log_text(proc)[-3000:]}"
    th.kill(proc, signal.SIGKILL)
    killed_at = max(th.finalized_steps(run_dir))
    assert th.SFT_STEPS < killed_at < th.TOTAL_STEPS, th.finalized_steps(run_dir)

    text = th.run(config, tensorboard, cache_dir=compile_cache, log_path=log_path("second"))
    assert f"resumed from {run_dir}/checkpoints at step {killed_at}" in text, text[-3000:]

    th.assert_run_matches(run_dir, reference_run, 1e-6, "gs:// run_dir, killed and resumed, vs local")
    # The rest of the run directory is in the bucket too.
    for name in ("config.yaml", "reference/dpo", "data/train.jsonl", "tokenizer/tokenizer_config.json"):
        assert paths.exists(paths.join(run_dir, name)), name
    events = [n for n in paths.listdir(paths.join(run_dir, "tb")) if n.startswith("events.out.tfevents")]
    assert len(events) >= 2, events  # at least one per process, written to the bucket


def _hf_run_config(path, run_dir, model_dir, data_path):
    from trl_harness import MAX_LENGTH, MAX_PROMPT_LENGTH

    tree = {
        "run_dir": run_dir,
        "model": {"hf_path": model_dir},
        "data": {"train": data_path, "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH},
        "loss": {"type": "sigmoid", "beta": 0.1},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"steps": 3, "batch_size": 4, "log_every": 1, "save_every": 3},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    with open(path, "w") as f:
        yaml.safe_dump(tree, f)
    return path


@pytest.mark.slow
def test_a_model_and_data_in_a_bucket_train_as_their_local_copies(gcs, tmp_path, log_path, compile_cache):
    pytest.importorskip("torch")
    from trl_harness import random_pairs, word_model

    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    word_model(model_dir)
    data_dir.mkdir()
    (data_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in random_pairs(12, seed=3)))
    prefix = f"{gcs}/inputs-{uuid.uuid4().hex[:8]}"
    remote_model = upload_dir(str(model_dir), f"{prefix}/model")
    remote_data = upload_dir(str(data_dir), f"{prefix}/data")

    runs = {}
    for label, model, data in (
        ("local", str(model_dir), str(data_dir / "pairs.jsonl")),
        ("bucket", remote_model, f"{remote_data}/pairs.jsonl"),
    ):
        run_dir = str(tmp_path / f"run-{label}")
        config = _hf_run_config(str(tmp_path / f"{label}.yaml"), run_dir, model, data)
        log = th.run(config, cache_dir=compile_cache, log_path=log_path(label))
        runs[label] = (run_dir, log)

    # The records name the bucket, not the local cache they were read from.
    assert f"JsonlSource('{remote_data}/pairs.jsonl', 12 records)" in runs["bucket"][1], runs["bucket"][1][
        -3000:
    ]
    losses = {label: th.losses(run_dir) for label, (run_dir, _) in runs.items()}
    assert sorted(losses["bucket"]) == [1, 2, 3]
    th.assert_losses_match(
        losses["bucket"], losses["local"], [1, 2, 3], 1e-6, "gs:// model and data vs local"
    )
    _, local_params = th.final_params(runs["local"][0])
    _, bucket_params = th.final_params(runs["bucket"][0])
    th.assert_trees_close(bucket_params, local_params, 1e-6, "parameters trained from gs:// inputs")
