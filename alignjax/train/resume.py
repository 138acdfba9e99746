"""Resume: the newest checkpoint that restores on every process, or a fresh start."""

from __future__ import annotations

import logging

import jax
import numpy as np

from alignjax.core import sharding
from alignjax.models.parts import DECODER, LORA
from alignjax.train.bootstrap import RunSetup
from alignjax.train.config import Stage
from alignjax.train.multihost import everywhere
from alignjax.train.reference import abstract_arrays
from alignjax.train.reference_sync import moving_reference_like
from alignjax.train.stage import (
    StagePlan,
    adapter_layout,
    open_train_source,
    plan_stage_of,
    reference_moves,
    stage_rng,
    stage_sizes,
)
from alignjax.train.state import LoopState, TrainState

log = logging.getLogger("alignjax.train")


def saved_sizes(run: RunSetup, stage: Stage, index: int) -> dict[str, int]:
    """A stage's objective sizes as saved when it started. Checkpoints written before sizes
    were saved learn them from the stage's data once, as they were learned then."""
    from alignjax.train.datasets import stage_data

    try:
        return stage_sizes(run, stage, None)
    except ValueError:
        data = stage_data(stage, index, run.data_dir, run.cfg.run_dir)
        source = open_train_source(run, stage, index, data)
        try:
            return stage_sizes(run, stage, data, source)
        finally:
            source.close()


def state_like(run: RunSetup, stage: Stage, index: int, plan: StagePlan) -> TrainState:
    """The shapes and placements of a stage's `TrainState`, which a checkpoint restores onto;
    its reference only where it moves (a frozen one is the stage's own save)."""
    replicated = sharding.replicated(run.mesh)
    on_mesh = lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=replicated)
    return TrainState(
        params=abstract_arrays(plan.param_shapes, plan.param_shardings),
        opt_state=abstract_arrays(plan.opt_shapes, plan.opt_shardings),
        reference=moving_reference_like(run) if reference_moves(run, stage, plan.objective) else None,
        method_state=jax.tree.map(on_mesh, plan.objective.init_state()),
        counters={"step": on_mesh(np.int32(0)), "skipped": on_mesh(np.int32(0))},
        rng=stage_rng(run, index),
    )


def _restore_step(run: RunSetup, checkpointer, all_stages: list[Stage], step: int):
    loop = checkpointer.restore_loop(step)
    stage = all_stages[loop.stage_index]
    plan = plan_stage_of(run, stage, saved_sizes(run, stage, loop.stage_index))
    return checkpointer.restore_state(step, state_like(run, stage, loop.stage_index, plan)), loop


def restore(run: RunSetup, checkpointer, all_stages: list[Stage]) -> tuple[TrainState, LoopState] | None:
    """The state and loop position of the newest good checkpoint; None when there is none."""
    failed: list[tuple[int, str]] = []
    for step in reversed(checkpointer.steps()):
        error = None
        try:
            resumed = _restore_step(run, checkpointer, all_stages, step)
        except Exception as e:  # a partial or corrupt step must not end the run
            error = f"{type(e).__name__}: {e}"
        if not everywhere(error is None):  # every process resumes from the same step
            error = error or "another process could not restore it"
            log.warning(
                "checkpoint step %d in %s does not restore (%s); trying an older one",
                step,
                checkpointer.root,
                error,
            )
            failed.append((step, error))
            continue
        for bad, _ in failed:
            log.warning(
                "checkpoint step %d moved to %s: it does not restore, and the resumed run "
                "will save that step again",
                bad,
                checkpointer.set_aside(bad),
            )
        return resumed
    if failed:
        # Starting over would silently train from scratch and then overwrite these steps.
        raise ValueError(
            f"{checkpointer.root}: no checkpoint restores ("
            + "; ".join(f"step {s}: {e}" for s, e in failed)
            + "). If the config changed since they were written, restore it; to start over, "
            "move that directory away or set run_dir to a new directory"
        )
    return None


def initial_params(run: RunSetup):
    """What the run's first stage trains from when no checkpoint restores."""
    if run.model_cfg.lora_rank:
        return {LORA: initial_adapters(run)}
    # A classifier's score head starts the stages whose method trains one (`start_stage`).
    return {DECODER: jax.device_put(run.loaded.params, run.param_shardings), **run.loaded.parts}


def initial_adapters(run: RunSetup):
    """A LoRA run's first adapters: `model.lora.from_peft`, or fresh (PEFT's init, B = 0)."""
    from alignjax.models import decoder

    _, shardings = adapter_layout(run.model_cfg, run.mesh)
    section = run.model_section.lora
    if section.from_peft is not None:
        from alignjax.convert.peft import adapters_from_peft_dir

        adapters = adapters_from_peft_dir(section.peft_dir(), run.model_cfg)
    else:
        adapters = decoder.init_adapters(run.model_cfg, jax.random.fold_in(jax.random.key(run.cfg.seed), 7))
    return jax.device_put(adapters, shardings)
