"""Stage assembly: what a stage trains with, from its config and the run's setup.

The objective is built from typed sizes (conditions, users, user tokens), not from a
live pipeline, so a resume can learn every array shape without reading data or loading
reward models; the sizes are saved with the run (`<run_dir>/stage_sizes/<stage>.json`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import optax

from alignjax.core import paths, sharding
from alignjax.core.fileio import atomic_write_json
from alignjax.data.pipeline import make_pipeline
from alignjax.models import decoder
from alignjax.models.parts import DECODER, LORA
from alignjax.train.bootstrap import RunSetup
from alignjax.train.config import Stage
from alignjax.train.data_check import check_stage_data
from alignjax.train.datasets import StageData, model_for_rows, stage_data
from alignjax.train.methods import Method, Objective, method_for
from alignjax.train.optim import make_optimizer, schedule
from alignjax.train.reference import frozen_reference, lora_reference, reference_tables, uses_table
from alignjax.train.reference_sync import reference_sync
from alignjax.train.state import LoopState, TrainState
from alignjax.train.step import StepFns, init_counters, make_step_fns


@dataclasses.dataclass
class StagePlan:
    """A stage's method, objective and optimizer with every shape and sharding: no data read,
    no array allocated (what `compile-check` compiles, and what a resume restores onto)."""

    method: Method
    objective: Objective
    tx: Any
    lr_at: Any
    param_shapes: Any  # {"decoder": ..., <part>: ...}: the decoder and the method's own parts
    param_shardings: Any
    opt_shapes: Any
    opt_shardings: Any


def opt_state_shardings(tx, opt_shapes, param_shardings, mesh):
    """The optimizer state's leaves that mirror parameters (Adam's moments, ...) take the
    parameters' shardings, found by optax from the state's structure; scalars replicate."""
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731  (multi_transform's other parts)
    return optax.tree_map_params(
        tx,
        lambda leaf, param_sharding: leaf if masked(leaf) else param_sharding,
        opt_shapes,
        param_shardings,
        transform_non_params=lambda _: sharding.replicated(mesh),
        is_leaf=masked,
    )


def _sizes_path(run: RunSetup, stage: Stage) -> str:
    return paths.join(run.cfg.run_dir, "stage_sizes", f"{stage.name}.json")


def stage_sizes(run: RunSetup, stage: Stage, data: StageData, pipeline=None) -> dict[str, int]:
    """num_conditions, num_users (generic user included), n_user_tokens: from the stage's
    pipeline when it is built, else as saved when the stage first started."""
    path = _sizes_path(run, stage)
    if pipeline is None:
        if not paths.exists(path):
            raise ValueError(
                f"{path}: the objective sizes of stage {stage.name!r} were not saved with the run; "
                "this checkpoint predates them: rerun the stage from its start (move its checkpoints aside)"
            )
        with paths.open(path) as f:
            return json.load(f)
    sizes = {
        "num_conditions": len(pipeline.condition_vocab) if pipeline.condition_vocab is not None else 0,
        "num_users": len(pipeline.user_vocab) + 1 if pipeline.user_vocab is not None else 1,
        "n_user_tokens": data.train.n_user_tokens,
    }
    if jax.process_index() == 0:
        atomic_write_json(path, sizes)
    return sizes


def adapter_layout(model_cfg, mesh):
    """(shapes, shardings) of a LoRA run's adapters: sharded like their base weights on
    the input and output axes, replicated over the rank."""
    shapes = jax.eval_shape(lambda: decoder.init_adapters(model_cfg, jax.random.key(0)))
    return shapes, sharding.tree_shardings(decoder.adapter_logical_axes(model_cfg), shapes, mesh)


def plan_stage(
    model_cfg, decoder_shapes, decoder_shardings, mesh, stage: Stage, sizes: dict[str, int]
) -> StagePlan:
    scfg = stage.config
    n_steps = stage.last_step - stage.first_step
    method = method_for(scfg.loss)
    model_cfg = model_for_rows(model_cfg, scfg.data)
    objective = method.build(model_cfg, scfg.loss, sizes)
    lr_at = schedule(scfg.optim, n_steps)
    tx = make_optimizer(scfg.optim, n_steps)
    if objective.wrap_optimizer is not None:
        tx = objective.wrap_optimizer(tx, lr_at)
    part_shapes = jax.eval_shape(objective.init_parts, jax.random.key(0), decoder_shapes)
    if model_cfg.lora_rank:  # only the adapters train; the base travels as the reference
        trained_shapes, trained_shardings = adapter_layout(model_cfg, mesh)
        param_shapes = {LORA: trained_shapes, **part_shapes}
        param_shardings = {LORA: trained_shardings}
    else:
        param_shapes = {DECODER: decoder_shapes, **part_shapes}
        param_shardings = {DECODER: decoder_shardings}
    # A method's own parts are small: replicated.
    param_shardings.update(jax.tree.map(lambda _: sharding.replicated(mesh), part_shapes))
    opt_shapes = jax.eval_shape(tx.init, param_shapes)
    opt_shardings = opt_state_shardings(tx, opt_shapes, param_shardings, mesh)
    return StagePlan(method, objective, tx, lr_at, param_shapes, param_shardings, opt_shapes, opt_shardings)


def plan_stage_of(run: RunSetup, stage: Stage, sizes: dict[str, int]) -> StagePlan:
    """`plan_stage` for a run's model and mesh."""
    decoder_shapes = jax.eval_shape(lambda p: p, run.loaded.params)
    return plan_stage(run.model_cfg, decoder_shapes, run.param_shardings, run.mesh, stage, sizes)


def open_train_source(run: RunSetup, stage: Stage, stage_index: int, data: StageData):
    """The stage's batch source: its method's (an online sampler), else the data pipeline."""
    method = method_for(stage.config.loss)
    if method.batch_source is not None:
        return method.batch_source(run, stage, stage_index, data.train)
    return make_pipeline(data.train, run.tokenizer)


def reference_moves(run: RunSetup, stage: Stage, objective: Objective) -> bool:
    """Whether the stage's reference moves as it trains (TR-DPO: `loss.sync_ref_model`), which
    makes it training state. A LoRA reference (the frozen base) and precomputed tables do not."""
    loss = stage.config.loss
    return bool(
        loss.sync_ref_model
        and objective.needs_reference
        and not uses_table(loss)
        and not run.model_cfg.lora_rank
    )


def stage_rng(run: RunSetup, index: int) -> jax.Array:
    """The stage's key: a function of the seed and the stage, so a resume need not save it."""
    return jax.random.fold_in(jax.random.key(run.cfg.seed), index)


@dataclasses.dataclass
class StageRun:
    """A started stage: what its steps use besides the state; its step compiled lazily."""

    data: StageData
    plan: StagePlan
    source: Any
    tables: dict | None
    fns: StepFns
    micro_ids: list[jax.Array]  # micro-batch indices, on the device once (the RNG folds them in)
    # TR-DPO: the jitted (reference, policy decoder) -> moved reference; None: frozen.
    sync_reference: Any = None


def _fresh_state(run: RunSetup, plan: StagePlan, index: int, params, step: int, reference) -> TrainState:
    """A stage's state at its start: the trained parameters carried in, a new optimizer."""
    rng = stage_rng(run, index)
    objective = plan.objective
    decoder_params = run.frozen_base if run.model_cfg.lora_rank else params[DECODER]
    extra_rng = jax.random.fold_in(rng, 2**31 - 1)
    # Parts a previous stage trained carry over when this method has them too.
    parts = {k: params.get(k, v) for k, v in objective.init_parts(extra_rng, decoder_params).items()}
    trained = {LORA: params[LORA]} if run.model_cfg.lora_rank else {DECODER: decoder_params}
    params = jax.device_put({**trained, **parts}, plan.param_shardings)
    return TrainState(
        params=params,
        opt_state=jax.jit(plan.tx.init, out_shardings=plan.opt_shardings)(params),
        reference=reference,
        method_state=jax.device_put(objective.init_state(), sharding.replicated(run.mesh)),
        counters=init_counters(step, 0, run.mesh),
        rng=rng,
    )


def _lora_reference(run: RunSetup, checkpointer, stage: Stage, index: int, params, resuming: bool):
    """A LoRA stage's reference (the frozen base, with the adapters the stage started from);
    None for a full fine-tuning run."""
    if not run.model_cfg.lora_rank:
        return None
    # Fresh adapters (the run's first stage, no from_peft) change nothing, so the reference
    # is then the base with adapters off.
    fresh = run.fresh_adapters and index == 0
    layout = adapter_layout(run.model_cfg, run.mesh)
    return lora_reference(run, checkpointer, stage, None if fresh else params[LORA], layout, resuming)


def start_stage(
    run: RunSetup, checkpointer, stage: Stage, loop: LoopState, params, resumed: TrainState | None
) -> tuple[StageRun, TrainState]:
    """Data, reference, objective and state of a stage at `loop`'s position: fresh from
    `params`, or `resumed` from a checkpoint (its data source then resumes from `loop`)."""
    resuming, index, lora_run = resumed is not None, loop.stage_index, bool(run.model_cfg.lora_rank)
    lora_ref = _lora_reference(run, checkpointer, stage, index, params, resuming)
    data = stage_data(stage, index, run.data_dir, run.cfg.run_dir)
    # Before the data pipeline starts: a missing table is the error a user meets first.
    tables = reference_tables(run, stage, data, lora_ref if lora_run else params[DECODER], resuming)
    # Then every record once (cached), so a bad one stops the run now, not when the stream reaches it.
    check_stage_data(run, stage, data)
    source = open_train_source(run, stage, index, data)
    plan = plan_stage_of(run, stage, stage_sizes(run, stage, data, source))
    moves = reference_moves(run, stage, plan.objective)
    reference = lora_ref  # a LoRA policy needs its base even when the loss needs no reference
    if resuming and moves:  # it has moved since the stage started: the checkpoint carries it
        reference = resumed.reference
    elif plan.objective.needs_reference and tables is None and not lora_run:
        reference = frozen_reference(run, checkpointer, stage, params[DECODER], resuming)
    if resuming:
        state = resumed.replace(reference=reference)
        # Every process's state: the checkpoint may have been saved by another number of processes.
        source.resume_from(loop.data_state)
    else:
        state = _fresh_state(run, plan, index, params, loop.step, reference)
    on_mesh = sharding.replicated(run.mesh)
    started = StageRun(
        data=data,
        plan=plan,
        source=source,
        tables=tables,
        fns=make_step_fns(plan.objective, plan.tx, plan.param_shardings, plan.opt_shardings),
        micro_ids=[jax.device_put(np.int32(m), on_mesh) for m in range(stage.config.train.grad_accum)],
        sync_reference=reference_sync(stage.config.loss, run.param_shardings) if moves else None,
    )
    return started, state
