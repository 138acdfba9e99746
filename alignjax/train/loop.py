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

import logging
import time
from typing import Any

import jax
import numpy as np

from alignjax import paths
from alignjax.hardware import device_peak_flops
from alignjax.models.flops import step_flops
from alignjax.models.parts import policy_decoder
from alignjax.train import checkpoint as ckpt_lib
from alignjax.train.bootstrap import RunSetup, bootstrap
from alignjax.train.config import Stage, TrainConfig, stages
from alignjax.train.evaluation import evaluate
from alignjax.train.log_record import PendingLog, resolve
from alignjax.train.metrics import MetricsWriter, ProgressBar
from alignjax.train.multihost import everywhere, gather_states, global_batch
from alignjax.train.preemption import Preempted, Stopper
from alignjax.train.reference_sync import syncs_after
from alignjax.train.resume import restore
from alignjax.train.stage import StageStart, loss_state_to_json, start_stage

__all__ = ["Preempted", "run"]

log = logging.getLogger("alignjax.train")


def _write_run_config(cfg: TrainConfig) -> None:
    """The resolved config (overrides applied), so generate / eval render prompts as training did."""
    if jax.process_index() != 0:
        return
    import yaml

    from alignjax import configlib

    tree = getattr(cfg, "_tree", None) or configlib.to_dict(cfg)
    with paths.open(paths.join(cfg.run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(tree, f, sort_keys=False)


def _run_stage(run: RunSetup, env, stage: Stage, index: int, params, step: int, restored, stopper: Stopper):
    writer, checkpointer = env
    scfg = stage.config
    with jax.transfer_guard("allow"):  # start-up: data, reference, optimizer state onto the mesh
        st = start_stage(run, checkpointer, stage, index, params, step, restored)
    params, opt_state, loss_state, counters = st.params, st.opt_state, st.loss_state, st.counters
    source, fns, tables, skipped = st.source, st.fns, st.tables, st.skipped
    online = hasattr(source, "next_for")
    peak = device_peak_flops()

    def checkpoint(at_step: int, skipped_now: int):
        loop_state = {
            "step": at_step,
            "stage": stage.name,
            "stage_index": index,
            "data_state": gather_states(source.get_state()),
            "loss_state": loss_state_to_json(loss_state),
            "skipped_steps": skipped_now,
        }
        moving_ref = st.ref_params if st.sync_reference is not None else None  # TR-DPO: part of the state
        checkpointer.save(
            at_step, params, opt_state, loop_state, run.model_meta, run.tokenizer_dir, reference=moving_ref
        )

    bar = ProgressBar(
        stage.last_step,
        initial=step,
        is_primary=jax.process_index() == 0,
        enabled=None if run.cfg.logging.progress_bar else False,
    )
    pending: PendingLog | None = None

    def flush():
        """Write the pending logging step's record; its values are read once it has finished,
        so tokens/s runs from the previous logged step's end to this one's."""
        nonlocal pending, skipped, window_start
        if pending is None:
            return
        record, skipped = resolve(pending, source.condition_vocab, source.user_vocab, skipped)
        now = time.perf_counter()
        elapsed = max(now - window_start, 1e-9)
        record["tokens_per_sec"] = pending.tokens / elapsed
        record["step_time_s"] = elapsed / max(pending.steps, 1)
        record["model_flops_per_step"] = pending.flops / max(pending.steps, 1)
        if peak is not None:  # models/flops.py: FLOPs of the padded batches, attention included
            record["mfu"] = pending.flops / elapsed / (peak * jax.device_count())
        writer.write(pending.step, record)
        bar.update(pending.step, record)
        pending, window_start = None, now

    window_tokens, window_flops, window_start, window_first_step = 0, 0.0, time.perf_counter(), step
    log.info("stage %s: steps %d..%d, loss %s", stage.name, stage.first_step, stage.last_step, scfg.loss.type)
    try:
        while step < stage.last_step:
            acc, metrics = None, {}
            for micro in range(scfg.train.grad_accum):
                if online:  # sampling from the current policy reads its samples back: a sync by nature
                    with jax.transfer_guard("allow"):
                        local = source.next_for(
                            policy_decoder(params, st.ref_params), step * scfg.train.grad_accum + micro
                        )
                    if not everywhere(local is not None):
                        continue  # an online source found nothing to learn from (all samples tied)
                else:
                    local = next(source)
                window_tokens += int(np.sum(local.segment_ids_BxL > 0)) * jax.process_count()
                rows, length = local.tokens_BxL.shape
                window_flops += step_flops(
                    run.model_cfg, rows * jax.process_count(), length, st.ref_params is not None
                ).total
                if tables:
                    local = tables["data.train"].attach(local)
                batch = global_batch(local, run.mesh, run.pad_id)
                args = (params, st.ref_params, batch, loss_state, st.base_rng, counters, st.micro_ids[micro])
                if acc is None:
                    acc, loss_state = fns.first(*args)
                else:
                    acc, loss_state = fns.accumulate(acc, *args)
            if acc is None:  # nothing to learn from in this step: no update, counted as skipped
                counters = fns.skip(counters)
            else:
                params, opt_state, counters, metrics = fns.apply(params, opt_state, acc, counters)
            flush()  # the previous logging step's values, now that this step is dispatched
            step += 1
            if st.sync_reference is not None and syncs_after(scfg.loss, stage.first_step, step):
                # TR-DPO, after the update as TRL's callback: the next steps, this step's eval
                # and checkpoint see the moved reference. Dispatched only: no wait.
                st.ref_params = st.sync_reference(st.ref_params, policy_decoder(params, st.ref_params))
            at_end = step == stage.last_step
            if step % scfg.train.log_every == 0 or at_end:
                with jax.transfer_guard("allow"):  # the schedule is a jnp function of the step
                    lr = float(st.plan.lr_at(step - stage.first_step - 1))
                host = {"lr": lr, "stage": index, **source.metrics()}
                pending = PendingLog(
                    step, metrics, counters, host, window_tokens, step - window_first_step, window_flops
                )
                window_tokens, window_flops, window_first_step = 0, 0.0, step
            evaluating = scfg.train.eval_every and step % scfg.train.eval_every == 0 or at_end
            stop = stopper.should_stop(step)
            saving = step % scfg.train.save_every == 0 or at_end or stop
            if evaluating or saving:  # host work by nature: the transfers are intended
                with jax.transfer_guard("allow"):
                    flush()
                    if evaluating:
                        _evaluate(run, writer, stage, st, params, loss_state, step)
                    if saving:
                        checkpoint(step, int(jax.device_get(counters["skipped"])))
            if stop:
                checkpointer.wait()
                raise Preempted(step)
        flush()
    finally:
        bar.close()
        source.close()
    return params, step


def _evaluate(run: RunSetup, writer, stage: Stage, st: StageStart, params, loss_state, step: int):
    eval_fn = st.fns.eval
    metrics = evaluate(
        run, stage, st.data, eval_fn, params, st.ref_params, loss_state, st.base_rng, st.tables
    )
    if metrics:
        writer.write(step, metrics, prefix="eval/")
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
        cfg.run_dir, keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpointing
    )
    stopper = Stopper(cfg.train.signal_check_every)
    try:
        with jax.transfer_guard("allow"):
            step, params, restored = restore(setup, checkpointer, all_stages)
        if step:
            writer.truncate_after(step)
            log.info("resumed from %s at step %d", checkpointer.root, step)
        for index, stage in enumerate(all_stages):
            if step >= stage.last_step:
                continue
            inside = (
                restored
                if restored and restored["loop"]["stage_index"] == index and step > stage.first_step
                else None
            )
            # The mesh in context: kernels XLA cannot partition (splash) run once per shard of it.
            with jax.set_mesh(setup.mesh):
                params, step = _run_stage(
                    setup, (writer, checkpointer), stage, index, params, step, inside, stopper
                )
            restored = None
    finally:
        stopper.restore()
        checkpointer.close()
        writer.close()
    return {"step": step}
