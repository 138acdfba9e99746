"""Interrupted runs end exactly where the uninterrupted run does.

The reference is the uninterrupted one-device SFT -> DPO run (conftest `reference_run`).
Every run here is a real `alignjax train` process: killed with SIGKILL (no chance to
save), stopped with SIGTERM (saves first), or restarted over a damaged checkpoint.
"""

import os
import re
import shutil
import signal
import time

import numpy as np
import pytest

import train_helpers as th
from alignjax.train import checkpoint as ckpt_lib


def _kill_after_checkpoint(config, run_dir, at_least, cache, log):
    """Start (or resume) a run, SIGKILL it once a checkpoint >= `at_least` is committed.

    Returns the newest committed step. Fails if the run had already finished: a kill that
    lands after the end proves nothing about resuming.
    """
    proc = th.start(config, cache_dir=cache, log_path=log)
    th.wait_for_checkpoint(proc, run_dir, at_least)
    assert proc.poll() is None, f"run ended before it could be killed:\n{th.log_text(proc)[-3000:]}"
    th.kill(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    steps = th.finalized_steps(run_dir)
    assert th.TOTAL_STEPS not in steps, f"the killed run had already saved its last step: {steps}"
    return max(steps)


@pytest.mark.slow
def test_sigkill_in_sft_then_in_dpo_resumes_to_the_same_parameters(
    reference_run, config_for, log_path, compile_cache
):
    config, run_dir = config_for("killed")

    killed_in_sft = _kill_after_checkpoint(config, run_dir, th.SAVE_EVERY, compile_cache, log_path("first"))
    assert killed_in_sft < th.SFT_STEPS, (
        f"the first kill landed after SFT (checkpoints {th.finalized_steps(run_dir)})"
    )
    # Kill again after the resumed run is well inside DPO: the stage's frozen reference,
    # its optimizer and its data position must all come back.
    killed_in_dpo = _kill_after_checkpoint(
        config, run_dir, th.SFT_STEPS + th.SAVE_EVERY, compile_cache, log_path("second")
    )
    assert th.SFT_STEPS < killed_in_dpo < th.TOTAL_STEPS
    assert os.path.isdir(os.path.join(run_dir, "reference", "dpo"))

    th.run(config, cache_dir=compile_cache, log_path=log_path("third"))

    # Each resume truncated metrics.jsonl to its checkpoint, so every step is logged once
    # (th.losses fails on a repeated step, which a run restarted from scratch would write).
    th.assert_run_matches(run_dir, reference_run, 1e-6, "after two SIGKILLs vs uninterrupted")


def _wait_for_logged_step(proc, run_dir, step, timeout=120.0):
    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if sum(1 for line in f if line.endswith("\n")) >= step:
                    return
        assert proc.poll() is None, f"run exited {proc.returncode} early:\n{th.log_text(proc)[-3000:]}"
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"step {step} not logged within {timeout}s")


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_resumes_on_another_mesh(
    reference_run, config_for, log_path, compile_cache
):
    """Criterion: SIGTERM leaves a checkpoint at the step it reports, exit code 143; a run
    checkpointed on 8 devices (fsdp=4 x tensor=2) resumes on one device with the losses of
    the uninterrupted run."""
    config, run_dir = config_for("preempted")
    mesh = ["mesh.fsdp=4", "mesh.tensor=2"]
    proc = th.start(config, mesh, devices=8, cache_dir=compile_cache, log_path=log_path("term"))
    _wait_for_logged_step(proc, run_dir, th.SFT_STEPS + 3)  # inside DPO
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    out = th.log_text(proc)
    assert proc.returncode == 143, out[-3000:]
    match = re.search(r"preempted: checkpointed step (\d+)", out)
    assert match, out[-3000:]
    stopped = int(match.group(1))
    assert th.SFT_STEPS < stopped < th.TOTAL_STEPS
    # The current step was saved, whether or not save_every would have saved it, and nothing later.
    assert max(th.finalized_steps(run_dir)) == stopped
    assert max(th.losses(run_dir)) == stopped
    saved_step, _ = th.final_params(run_dir)
    assert saved_step == stopped

    th.run(config, devices=1, cache_dir=compile_cache, log_path=log_path("resume"))
    losses = th.losses(run_dir)
    assert sorted(losses) == list(range(1, th.TOTAL_STEPS + 1))
    # Different device counts reduce in a different order: equal to float32 noise.
    th.assert_losses_match(
        losses,
        reference_run.losses,
        range(1, th.TOTAL_STEPS + 1),
        1e-4,
        "8-device run resumed on 1 device vs uninterrupted 1-device run",
    )
    _, params = th.final_params(run_dir)
    th.assert_trees_close(params, reference_run.final_params, 1e-4, "final parameters")


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    reference_run, tmp_path, log_path, compile_cache
):
    run_dir = str(tmp_path / "damaged")
    shutil.copytree(reference_run.run_dir, run_dir)
    config = th.write_config(str(tmp_path / "damaged.yaml"), run_dir)
    steps = th.finalized_steps(run_dir)
    newest, previous = steps[-1], steps[-2]
    assert newest == th.TOTAL_STEPS
    os.remove(os.path.join(run_dir, "checkpoints", str(newest), "params", "manifest.ocdbt"))

    out = th.run(config, cache_dir=compile_cache, log_path=log_path("fallback"))

    assert f"checkpoint step {newest} in " in out and "does not restore" in out, out[-3000:]
    assert "trying an older one" in out
    set_aside = os.path.join(run_dir, "checkpoints_unrestorable", str(newest))
    assert f"moved to {set_aside}" in out
    assert os.path.isdir(set_aside)
    losses = th.losses(run_dir)
    # Steps after `previous` were trained again (the metrics were truncated to it first).
    assert sorted(losses) == list(range(1, th.TOTAL_STEPS + 1))
    th.assert_losses_match(
        losses,
        reference_run.losses,
        range(previous + 1, th.TOTAL_STEPS + 1),
        1e-6,
        f"steps retrained from step {previous}",
    )
    step, params = th.final_params(run_dir)
    assert step == th.TOTAL_STEPS
    th.assert_trees_close(params, reference_run.final_params, 1e-6, "parameters retrained after fallback")


@pytest.mark.slow
def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(
    reference_run, tmp_path, log_path, compile_cache
):
    run_dir = str(tmp_path / "all_damaged")
    shutil.copytree(reference_run.run_dir, run_dir)
    config = th.write_config(str(tmp_path / "all_damaged.yaml"), run_dir)
    steps = th.finalized_steps(run_dir)
    for step in steps:
        os.remove(os.path.join(run_dir, "checkpoints", str(step), "params", "manifest.ocdbt"))
    before = th.metrics(run_dir)

    out = th.run(config, cache_dir=compile_cache, log_path=log_path("none"), expect_rc=2)

    assert "no checkpoint restores" in out and "run_dir" in out, out[-3000:]
    for step in steps:
        assert f"step {step}: " in out
    # Nothing was trained over or thrown away.
    assert th.finalized_steps(run_dir) == steps
    assert th.metrics(run_dir) == before


def test_reference_cut_short_counts_as_absent_and_restores_onto_any_sharding(tmp_path):
    """A stage's reference whose save never committed (only Orbax's temporary directory)
    is absent, not an error; a committed one restores onto the requested sharding."""
    import jax

    root = str(tmp_path / "reference" / "dpo")
    os.makedirs(os.path.join(root, "0.orbax-checkpoint-tmp-1234", "params"))
    params = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), params)
    assert ckpt_lib.restore_reference(root, abstract) is None
    assert ckpt_lib.restore_reference(str(tmp_path / "missing"), abstract) is None

    ckpt_lib.save_reference(root, jax.device_put(params, sharding), {"hf_config": {}})
    restored = ckpt_lib.restore_reference(root, abstract)
    th.assert_trees_close(restored, params, 0.0, "reference")
    assert all(x.sharding == sharding for x in jax.tree.leaves(restored))


def test_checkpoint_with_ungrouped_parameters_says_how_to_carry_on(tmp_path, log_path, compile_cache):
    """Checkpoints written before parameters were grouped as {"decoder", <parts>} (the decoder's
    keys at the top level) do not resume; the run stops and says to export and restart."""
    import jax
    import jax.numpy as jnp
    import optax

    from alignjax.convert.loading import ModelSection, load_model
    from alignjax.data.byte_tokenizer import VOCAB_SIZE
    from alignjax.train.state import LoopState, TrainState

    run_dir = str(tmp_path / "ungrouped")
    config = th.write_config(str(tmp_path / "ungrouped.yaml"), run_dir)
    tree = th.tiny_config(run_dir)["model"]
    loaded = load_model(ModelSection(**tree), jax.random.key(0), vocab_size=VOCAB_SIZE)
    checkpointer = ckpt_lib.TrainCheckpointer(run_dir, loaded.meta, async_save=False)
    state = TrainState(
        params=loaded.params,
        opt_state=optax.adam(1e-3).init(loaded.params),
        reference=None,
        method_state={},
        counters={"step": jnp.int32(4), "skipped": jnp.int32(0)},
        rng=jax.random.key(0),
    )
    loop = LoopState(step=4, stage_index=0, stage_name="sft", data_state=[{}])
    checkpointer.save(state, loop, reference_moves=False)
    checkpointer.close()

    out = th.run(config, cache_dir=compile_cache, log_path=log_path("ungrouped"), expect_rc=2)

    assert "step 4: ValueError: it was written before trained parameters were grouped" in out, out[-3000:]
    assert "alignjax convert orbax-to-hf" in out
    assert th.finalized_steps(run_dir) == [4]  # nothing trained over it
