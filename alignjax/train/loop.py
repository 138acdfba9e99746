"""`alignjax train`: stages of jitted steps over a mesh, with exact resume.

Per stage: plan it (objective, optimizer, shapes and shardings), open its batch source,
then loop: fetch a batch per micro-step, accumulate gradients on the device, update,
log, evaluate, checkpoint. The host never waits on the device in a step that does not
log, evaluate or checkpoint: metrics and counters stay on the device, and a logging
step's values are read after the next step is dispatched. A resumed run restores
parameters, optimizer state, step, counters and each process's data-iterator state, so it
continues exactly where the uninterrupted run would have been. SIGTERM saves and exits.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from alignjax.core import paths
from alignjax.core.hardware import device_peak_flops
from alignjax.models.flops import step_flops
from alignjax.models.parts import policy_decoder
from alignjax.train import checkpoint as ckpt_lib
from alignjax.train.bootstrap import RunSetup, bootstrap
from alignjax.train.config import Stage, TrainConfig, stages
from alignjax.train.evaluation import evaluate
from alignjax.train.hub_export import push_finished_run
from alignjax.train.log_record import PendingLog, resolve
from alignjax.train.metrics import MetricsWriter, ProgressBar
from alignjax.train.multihost import everywhere, gather_states, global_batch
from alignjax.train.preemption import Preempted, Stopper
from alignjax.train.reference import runs_reference_forward
from alignjax.train.reference_sync import syncs_after
from alignjax.train.resume import initial_params, restore
from alignjax.train.stage import StageRun, start_stage
from alignjax.train.state import LoopState, TrainState, Window

__all__ = ["Preempted", "run"]

log = logging.getLogger("alignjax.train")


def _write_run_config(cfg: TrainConfig) -> None:
    """The resolved config (overrides applied), so generate / eval render prompts as training did."""
    if jax.process_index() != 0:
        return
    import yaml

    from alignjax.core import configlib

    tree = getattr(cfg, "_tree", None) or configlib.to_dict(cfg)
    with paths.open(paths.join(cfg.run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(tree, f, sort_keys=False)


@dataclasses.dataclass(frozen=True)
class _Running:
    """A stage in progress: what its steps use on the host."""

    run: RunSetup
    writer: MetricsWriter
    checkpointer: ckpt_lib.TrainCheckpointer
    stage: Stage
    started: StageRun
    bar: ProgressBar
    peak_flops: float | None  # per device; None where unknown (no MFU)


def _run_stage(
    run: RunSetup, env, stage: Stage, params, loop: LoopState, resumed: TrainState | None, stopper: Stopper
) -> TrainState:
    """Train `stage` from `loop`'s position: fresh from `params`, or from the `resumed` state."""
    writer, checkpointer = env
    with jax.transfer_guard("allow"):  # start-up: data, reference, optimizer state onto the mesh
        started, state = start_stage(run, checkpointer, stage, loop, params, resumed)
    peak = device_peak_flops()
    bar = ProgressBar(
        stage.last_step,
        initial=loop.step,
        is_primary=jax.process_index() == 0,
        enabled=None if run.cfg.logging.progress_bar else False,
    )
    running = _Running(run, writer, checkpointer, stage, started, bar, peak)
    loop.pending, loop.window = None, Window(first_step=loop.step, start=time.perf_counter())
    log.info(
        "stage %s: steps %d..%d, loss %s",
        stage.name,
        stage.first_step,
        stage.last_step,
        stage.config.loss.type,
    )
    try:
        while loop.step < stage.last_step:
            state = _step(running, state, loop, stopper)
        _flush(running, loop)
    finally:
        bar.close()
        started.source.close()
    return state


def _step(running: _Running, state: TrainState, loop: LoopState, stopper: Stopper) -> TrainState:
    """One step and what follows it: logging, evaluation, a checkpoint; Preempted on SIGTERM."""
    stage, train = running.stage, running.stage.config.train
    acc, state = _micro_batches(running, state, loop)
    metrics = {}
    if acc is None:  # nothing to learn from in this step: no update, counted as skipped
        state = running.started.fns.skip(state)
    else:
        state, metrics = running.started.fns.apply(state, acc)
    _flush(running, loop)  # the previous logging step's values, now that this step is dispatched
    loop.step += 1
    state = _sync_reference(running, state, loop.step)
    at_end = loop.step == stage.last_step
    if loop.step % train.log_every == 0 or at_end:
        _hold_log(running, state, loop, metrics)
    evaluating = train.eval_every and loop.step % train.eval_every == 0 or at_end
    stop = stopper.should_stop(loop.step)
    saving = loop.step % train.save_every == 0 or at_end or stop
    if evaluating or saving:  # host work by nature: the transfers are intended
        with jax.transfer_guard("allow"):
            _flush(running, loop)
            if evaluating:
                _evaluate(running, state, loop.step)
            if saving:
                _checkpoint(running, state, loop)
    if stop:
        running.checkpointer.wait()
        raise Preempted(loop.step)
    return state


def _micro_batches(running: _Running, state: TrainState, loop: LoopState):
    """(summed gradients and metrics, state) of one step's micro-batches; None when none of
    them had anything to learn from."""
    run, started = running.run, running.started
    grad_accum = running.stage.config.train.grad_accum
    reference = runs_reference_forward(started.plan.objective, running.stage.config.loss)
    acc = None
    for micro in range(grad_accum):
        local = _next_batch(started.source, state, loop.step * grad_accum + micro)
        if local is None:
            continue  # an online source found nothing to learn from (all samples tied)
        _count(run, loop.window, local, with_reference=reference)
        if started.tables:
            local = started.tables["data.train"].attach(local)
        batch = global_batch(local, run.mesh, run.pad_id)
        if acc is None:
            acc, state = started.fns.first(state, batch, started.micro_ids[micro])
        else:
            acc, state = started.fns.accumulate(acc, state, batch, started.micro_ids[micro])
    return acc, state


def _next_batch(source, state: TrainState, index: int):
    """The next local batch; None where an online source found nothing to learn from."""
    if not hasattr(source, "next_for"):
        return next(source)
    with jax.transfer_guard("allow"):  # sampling from the current policy reads its samples back
        local = source.next_for(policy_decoder(state.params, state.reference), index)
    return local if everywhere(local is not None) else None


def _count(run: RunSetup, window: Window, local, with_reference: bool) -> None:
    """Add a local batch's tokens and model FLOPs (over every process) to the window."""
    window.tokens += int(np.sum(local.segment_ids_BxL > 0)) * jax.process_count()
    rows, length = local.tokens_BxL.shape
    window.flops += step_flops(run.model_cfg, rows * jax.process_count(), length, with_reference).total


def _sync_reference(running: _Running, state: TrainState, step: int) -> TrainState:
    """TR-DPO, after the update as TRL's callback: the next steps, this step's eval and
    checkpoint see the moved reference. Dispatched only: no wait."""
    sync, stage = running.started.sync_reference, running.stage
    if sync is None or not syncs_after(stage.config.loss, stage.first_step, step):
        return state
    return state.replace(reference=sync(state.reference, policy_decoder(state.params, state.reference)))


def _hold_log(running: _Running, state: TrainState, loop: LoopState, metrics) -> None:
    """Keep this logging step's values on the device until the next step is dispatched."""
    stage, window = running.stage, loop.window
    with jax.transfer_guard("allow"):  # the schedule is a jnp function of the step
        lr = float(running.started.plan.lr_at(loop.step - stage.first_step - 1))
    host = {"lr": lr, "stage": loop.stage_index, **running.started.source.metrics()}
    loop.pending = PendingLog(
        loop.step, metrics, state.counters, host, window.tokens, loop.step - window.first_step, window.flops
    )
    loop.window = Window(first_step=loop.step, start=window.start)


def _flush(running: _Running, loop: LoopState) -> None:
    """Write the pending logging step's record; its values are read once it has finished,
    so tokens/s runs from the previous logged step's end to this one's."""
    pending, source = loop.pending, running.started.source
    if pending is None:
        return
    record, loop.skipped = resolve(pending, source.condition_vocab, source.user_vocab, loop.skipped)
    now = time.perf_counter()
    elapsed = max(now - loop.window.start, 1e-9)
    record["tokens_per_sec"] = pending.tokens / elapsed
    record["step_time_s"] = elapsed / max(pending.steps, 1)
    record["model_flops_per_step"] = pending.flops / max(pending.steps, 1)
    if running.peak_flops is not None:  # models/flops.py: FLOPs of the padded batches, attention included
        record["mfu"] = pending.flops / elapsed / (running.peak_flops * jax.device_count())
    running.writer.write(pending.step, record)
    running.bar.update(pending.step, record)
    loop.pending, loop.window.start = None, now


def _checkpoint(running: _Running, state: TrainState, loop: LoopState) -> None:
    loop.data_state = gather_states(running.started.source.get_state())
    running.checkpointer.save(state, loop, reference_moves=running.started.sync_reference is not None)


def _evaluate(running: _Running, state: TrainState, step: int) -> None:
    started = running.started
    metrics = evaluate(running.run, running.stage, started.data, started.fns.eval, state, started.tables)
    if metrics:
        running.writer.write(step, metrics, prefix="eval/")
        log.info("step %d eval: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train; returns a summary (the final step)."""
    with jax.transfer_guard("allow"):  # start-up: model, tokenizer and data, then resume
        setup = bootstrap(cfg)
    _write_run_config(cfg)
    all_stages = stages(cfg)
    writer = MetricsWriter(
        cfg.run_dir,
        tensorboard=cfg.logging.tensorboard,
        wandb=cfg.logging.wandb,
        is_primary=jax.process_index() == 0,
    )
    checkpointer = ckpt_lib.TrainCheckpointer(
        cfg.run_dir,
        setup.model_meta,
        tokenizer_dir=setup.tokenizer_dir,
        keep=cfg.train.keep_checkpoints,
        async_save=cfg.train.async_checkpointing,
    )
    stopper = Stopper(cfg.train.signal_check_every)
    try:
        step = _run_stages(setup, (writer, checkpointer), all_stages, stopper)
    finally:
        stopper.restore()
        checkpointer.close()
        writer.close()
    push_finished_run(cfg)
    return {"step": step}


def _run_stages(setup: RunSetup, env, all_stages: list[Stage], stopper: Stopper) -> int:
    """Every stage not finished yet, resuming inside the one a checkpoint stopped in; the final step."""
    writer, checkpointer = env
    with jax.transfer_guard("allow"):
        resumed = restore(setup, checkpointer, all_stages)
        params = resumed[0].params if resumed else initial_params(setup)
    step = resumed[1].step if resumed else 0
    if step:
        writer.truncate_after(step)
        log.info("resumed from %s at step %d", checkpointer.root, step)
    for index, stage in enumerate(all_stages):
        if step >= stage.last_step:
            continue
        if resumed and resumed[1].stage_index == index and step > stage.first_step:
            state, loop = resumed
        else:
            state, loop = None, LoopState(step=step, stage_index=index, stage_name=stage.name)
        # The mesh in context: kernels XLA cannot partition (splash) run once per shard of it.
        with jax.set_mesh(setup.mesh):
            state = _run_stage(setup, env, stage, params, loop, state, stopper)
        params, step, resumed = state.params, loop.step, None
    return step
