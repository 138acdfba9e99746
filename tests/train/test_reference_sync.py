"""TR-DPO (`loss.sync_ref_model`): the reference moves as TRL moves it, every checkpoint
carries it, and a run resumed inside the stage continues with the moved reference
exactly as the uninterrupted run did. (Per-step parity with TRL's DPOTrainer across syncs:
`test_trl_dpo_options.py`.)"""

import json
import os
import shutil

import numpy as np
import pytest

import trl_harness as h  # noqa: E402

STEPS, SYNC_EVERY, ALPHA = 6, 2, 0.5
RUN = h.Run(STEPS, batch=4, lr=3e-3)


def _config(run_dir, model_dir, data_path):
    loss = {
        "type": "sigmoid",
        "sync_ref_model": True,
        "ref_model_mixup_alpha": ALPHA,
        "ref_model_sync_steps": SYNC_EVERY,
    }
    config = RUN.alignjax_config(run_dir, model_dir, data_path, loss)
    config["optim"] = {"name": "adamw", "lr": 3e-3, "schedule": "linear"}
    config["train"].update(save_every=1, keep_checkpoints=STEPS)
    return config


def _item(run_dir, step, item):
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(run_dir, "checkpoints", str(step), item)
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    return checkpointer.restore(
        path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    )


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _max_diff(a, b):
    import jax

    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference_sync")
    model_dir = h.word_model(root / "model")
    data_path = h.write_jsonl(root / "pairs.jsonl", h.random_pairs(STEPS * 4, seed=5))
    run_dir = str(root / "run")
    h.alignjax_train(_config(run_dir, model_dir, data_path))
    return root, model_dir, data_path, run_dir


@pytest.mark.slow
def test_the_reference_moves_every_sync_steps_as_trl_mixes_it(uninterrupted):
    import jax

    from alignjax.convert import model_checkpoint as mc

    _, _, _, run_dir = uninterrupted
    ref = mc.load_params(os.path.join(run_dir, "reference", "train"), 0, as_numpy=True)  # the stage's start
    for step in range(1, STEPS + 1):
        saved = _item(run_dir, step, "reference")
        if step % SYNC_EVERY == 0:  # alpha * policy + (1 - alpha) * reference, in float32
            policy = _item(run_dir, step, "params")["decoder"]
            moved = jax.tree.map(
                lambda r, p: (np.float32(ALPHA) * p + np.float32(1 - ALPHA) * r).astype(np.float32),
                ref,
                policy,
            )
            assert _max_diff(moved, ref) > 1e-3, f"step {step}: the policy has moved away from the reference"
            ref = moved
        assert _max_diff(saved, ref) <= 1e-7, f"step {step}"


@pytest.mark.slow
def test_a_resume_inside_the_stage_continues_with_the_moved_reference(uninterrupted):
    root, _, _, run_dir = uninterrupted
    resumed_dir = str(root / "resumed")
    shutil.copytree(run_dir, resumed_dir)
    # Killed after step 3: its checkpoint holds the reference moved at step 2.
    for step in range(4, STEPS + 1):
        shutil.rmtree(os.path.join(resumed_dir, "checkpoints", str(step)))
    with open(run_dir + ".yaml") as f:
        import yaml

        config = yaml.safe_load(f)
    h.alignjax_train(dict(config, run_dir=resumed_dir))

    expected, got = _losses(run_dir), _losses(resumed_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(4, STEPS + 1):  # step 4 trains against the reference of step 2, 6 of 4
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    assert _max_diff(_item(resumed_dir, STEPS, "params"), _item(run_dir, STEPS, "params")) <= 1e-6
    assert _max_diff(_item(resumed_dir, STEPS, "reference"), _item(run_dir, STEPS, "reference")) <= 1e-6
