"""A checkpoint in the layout the trainer has always written restores, and resumes exactly.

`fixtures/saved_run` holds a run as alignjax wrote it at commit 8c0f2c5: SFT for 2 steps,
then 4 steps of bco_pair (a method with state across steps) under TR-DPO (a reference that
moves, so the checkpoint carries it), two micro-batches a step. Kept from it: the
checkpoint at step 4 (inside the second stage), the stage sizes, what the trainer handed
to that save (`saved.npz`: parameters, optimizer state and reference by tree path;
`saved.json`: the loop state) and the uninterrupted run's metrics (`uninterrupted.jsonl`).
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import train_helpers as th

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "saved_run")
SAVED_STEP, LAST_STEP = 4, 6


def _saved_run(tmp_path) -> tuple[str, str]:
    """(config, run_dir) of a copy of the saved run."""
    run_dir = str(tmp_path / "run")
    shutil.copytree(os.path.join(FIXTURE, "run"), run_dir)
    with open(os.path.join(FIXTURE, "config.yaml")) as f:
        text = f.read().replace("RUN_DIR", run_dir)
    config = str(tmp_path / "config.yaml")
    with open(config, "w") as f:
        f.write(text)
    return config, run_dir


def _by_path(**trees) -> dict[str, np.ndarray]:
    return {
        name + jax.tree_util.keystr(path): np.asarray(leaf)
        for name, tree in trees.items()
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_saved_checkpoint_restores_what_was_saved(tmp_path):
    from alignjax.train.bootstrap import bootstrap
    from alignjax.train.checkpoint import TrainCheckpointer
    from alignjax.train.config import load_config, stages
    from alignjax.train.resume import restore

    config, run_dir = _saved_run(tmp_path)
    cfg = load_config(config)
    setup = bootstrap(cfg)
    checkpointer = TrainCheckpointer(run_dir, setup.model_meta, async_save=False)
    try:
        state, loop = restore(setup, checkpointer, stages(cfg))
    finally:
        checkpointer.close()
    with open(os.path.join(FIXTURE, "saved.json")) as f:
        saved = json.load(f)
    arrays = np.load(os.path.join(FIXTURE, "saved.npz"))

    assert (loop.step, loop.stage_name, loop.stage_index) == (SAVED_STEP, "dpo", 1)
    assert (saved["step"], saved["stage"], saved["stage_index"]) == (SAVED_STEP, "dpo", 1)
    assert loop.skipped == saved["skipped_steps"]
    assert loop.data_state == saved["data_state"]
    assert loop.data_state[0]["batches"] == 4  # two steps of two micro-batches into the stage
    restored = _by_path(params=state.params, opt_state=state.opt_state, reference=state.reference)
    assert sorted(restored) == sorted(arrays.files)
    for name in arrays.files:
        assert restored[name].dtype == arrays[name].dtype, name
        np.testing.assert_array_equal(restored[name], arrays[name], err_msg=name)
    counters = (int(state.counters["step"]), int(state.counters["skipped"]))
    assert counters == (SAVED_STEP, saved["skipped_steps"])
    # bco_pair's running reward mean over the stage's 4 micro-batches so far.
    method_state = [float(x) for x in jax.tree.leaves(state.method_state)]
    assert method_state == jax.tree.leaves(saved["loss_state"])
    assert method_state[1] == 4.0 and method_state[0] != 0.0


def test_a_save_has_the_saved_runs_layout_and_restores_to_itself(tmp_path):
    """A checkpoint written now holds the items and loop keys of the saved run's, and
    restores to the state and loop position it was handed."""
    import jax.numpy as jnp

    from alignjax.train.checkpoint import TrainCheckpointer
    from alignjax.train.state import LoopState, TrainState

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = {"decoder": {"w_DxF": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    state = TrainState(
        params=params,
        opt_state={"mu": {"decoder": {"w_DxF": np.full((2, 3), 0.5, np.float32)}}, "count": np.int32(3)},
        reference={"w_DxF": np.ones((2, 3), np.float32)},
        method_state={"mean": jnp.float32(-0.25), "count": jnp.float32(4.0)},
        counters={"step": jnp.int32(SAVED_STEP), "skipped": jnp.int32(1)},
        rng=jax.random.key(0),
    )
    loop = LoopState(step=SAVED_STEP, stage_index=1, stage_name="dpo", data_state=[{"batches": 4}])
    checkpointer = TrainCheckpointer(str(tmp_path), {"hf_config": {}}, async_save=False)
    try:
        checkpointer.save(state, loop, reference_moves=True)
        like = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=device),
            state.replace(rng=None),  # the key is not saved: the stage derives it
        ).replace(rng=state.rng)
        restored_loop = checkpointer.restore_loop(SAVED_STEP)
        restored = checkpointer.restore_state(SAVED_STEP, like)
    finally:
        checkpointer.close()

    def layout(root):
        step_dir = os.path.join(root, "checkpoints", str(SAVED_STEP))
        with open(os.path.join(step_dir, "loop", "metadata")) as f:
            keys = sorted(json.load(f))
        return sorted(d for d in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, d))), keys

    assert layout(str(tmp_path)) == layout(os.path.join(FIXTURE, "run"))
    assert (restored_loop.step, restored_loop.stage_index, restored_loop.stage_name) == (SAVED_STEP, 1, "dpo")
    assert (restored_loop.skipped, restored_loop.data_state) == (1, [{"batches": 4}])
    th.assert_trees_close(restored.replace(rng=None), state.replace(rng=None), 0.0, "restored state")
    assert restored.method_state["mean"].dtype == jnp.float32


@pytest.mark.slow
def test_saved_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, log_path, compile_cache):
    config, run_dir = _saved_run(tmp_path)
    th.run(config, cache_dir=compile_cache, log_path=log_path("resume"))

    with open(os.path.join(FIXTURE, "uninterrupted.jsonl")) as f:
        expected = {r["step"]: r for r in map(json.loads, f)}
    actual = {r["step"]: r for r in th.metrics(run_dir)}
    assert sorted(actual) == list(range(SAVED_STEP + 1, LAST_STEP + 1))
    for step, record in actual.items():
        # The loss reads the restored reference; bco/delta the restored method state.
        for key in ("loss", "bco/delta", "rewards/margins", "grad_norm"):
            assert record[key] == pytest.approx(expected[step][key], abs=1e-6), (step, key)
        assert record["data/examples"] == expected[step]["data/examples"]
    assert th.finalized_steps(run_dir) == [SAVED_STEP, LAST_STEP]
