"""`alignjax train`: stages of jitted steps over a mesh, with exact resume.

Per stage: build the data pipeline and the optimizer, place parameters on the mesh by
their logical axes, then loop: fetch a batch per micro-step, accumulate gradients,
update, log, evaluate, checkpoint. A resumed run restores parameters, optimizer state,
step, RNG and each process's data-iterator state, so it continues exactly where the
uninterrupted run would have been. SIGTERM (preemption) saves the current step first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignjax import sharding
from alignjax.bench import device_peak_flops
from alignjax.data.pipeline import make_pipeline
from alignjax.models import decoder
from alignjax.models.config import ModelConfig
from alignjax.models.loading import LoadedModel, load_model
from alignjax.train import checkpoint as ckpt_lib
from alignjax.train.evaluation import evaluate
from alignjax.train.multihost import everywhere, gather_states, global_batch
from alignjax.train import objectives
from alignjax.train import step as step_lib
from alignjax.train.config import Stage, TrainConfig, data_config, resolve_builtin_paths, sources_from, stages
from alignjax.train.metrics import MetricsWriter, ProgressBar
from alignjax.train.optim import make_optimizer, schedule

log = logging.getLogger("alignjax.train")


class Preempted(SystemExit):
    """Raised after SIGTERM once the current step is checkpointed."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


@dataclasses.dataclass
class RunContext:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    model_cfg: ModelConfig
    model_meta: dict[str, Any]
    tokenizer: Any
    tokenizer_dir: str | None
    param_shardings: Any
    writer: MetricsWriter
    checkpointer: ckpt_lib.TrainCheckpointer
    data_dir: str | None
    pad_id: int


def tokenizer_for(loaded: LoadedModel, run_dir: str):
    """The model's own tokenizer, or the built-in byte tokenizer for presets."""
    import transformers

    if loaded.tokenizer_dir is not None:
        return transformers.AutoTokenizer.from_pretrained(loaded.tokenizer_dir), loaded.tokenizer_dir
    from alignjax.data.byte_tokenizer import make_byte_tokenizer

    path = os.path.join(run_dir, "tokenizer")
    tokenizer = make_byte_tokenizer()
    if jax.process_index() == 0:
        tokenizer.save_pretrained(path)
    return tokenizer, path


def prepare_builtin_data(cfg: TrainConfig) -> str | None:
    if not cfg.data.builtin:
        return None
    from alignjax.tasks import BUILTIN_TASKS

    if cfg.data.builtin not in BUILTIN_TASKS:
        raise ValueError(f"data.builtin={cfg.data.builtin!r} is not one of {sorted(BUILTIN_TASKS)}")
    out = os.path.join(cfg.run_dir, "data")
    # Deterministic: every process writes the same files (hosts need not share a disk). They
    # are written aside and renamed into place, so a process sharing the disk never reads a
    # file another one is halfway through rewriting.
    scratch = f"{out}.tmp-{jax.process_index()}-{os.getpid()}"
    BUILTIN_TASKS[cfg.data.builtin](scratch, seed=cfg.seed)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(scratch):
        os.replace(os.path.join(scratch, name), os.path.join(out, name))
    os.rmdir(scratch)
    return out


def _opt_shardings(opt_shapes, param_shapes, param_shardings, mesh):
    """Optimizer leaves that mirror a parameter take its sharding; the rest replicate."""
    by_suffix = {}
    for (path, shape), sh in zip(
        jax.tree_util.tree_leaves_with_path(param_shapes), jax.tree.leaves(param_shardings)
    ):
        by_suffix[jax.tree_util.keystr(path)] = (shape.shape, sh)

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        for suffix, (shape, sh) in by_suffix.items():
            if key.endswith(suffix) and tuple(leaf.shape) == tuple(shape):
                return sh
        return sharding.replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, opt_shapes)


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@dataclasses.dataclass
class StageSetup:
    pipeline: Any
    objective: objectives.Objective
    tx: Any
    lr_at: Any
    param_shapes: Any  # decoder params plus the objective's own trainable parts
    param_shardings: Any
    opt_shapes: Any
    opt_shardings: Any


def _stage_setup(ctx: "RunContext", stage: Stage, stage_index: int, decoder_shapes) -> StageSetup:
    """Everything a stage needs that follows from its config and data."""
    scfg = stage.config
    n_steps = stage.last_step - stage.first_step
    micro_batch = scfg.train.batch_size // scfg.train.grad_accum
    if micro_batch * scfg.train.grad_accum != scfg.train.batch_size:
        raise ValueError(f"train.batch_size={scfg.train.batch_size} is not divisible by train.grad_accum")
    if scfg.data.train is None:
        raise ValueError(
            f"stage {stage.name}: data.train is not set (a path, a list of paths, or builtin:NAME)"
        )
    sources = sources_from(resolve_builtin_paths(scfg.data.train, ctx.data_dir), "data.train")
    dcfg = data_config(scfg.data, sources, micro_batch, seed=scfg.data.seed + stage_index, num_epochs=None)
    if dcfg.n_user_tokens > 0 and dcfg.user_vocab_path is None:
        # Saved with the run, so eval and generation map user ids exactly as training did.
        dcfg = dataclasses.replace(dcfg, user_vocab_path=os.path.join(ctx.cfg.run_dir, "user_vocab.json"))
    if scfg.loss.stage_kind == "mo_odpo":
        from alignjax.online.mo_odpo import OnlinePairSource

        prompts = make_pipeline(dataclasses.replace(dcfg, record_type="prompt"), ctx.tokenizer)
        pipeline = OnlinePairSource(
            prompts,
            dataclasses.replace(dcfg, record_type="preference"),
            ctx.tokenizer,
            ctx.model_cfg,
            scfg.loss.mo_odpo,
            seed=scfg.seed + stage_index,
            per_host_batch=micro_batch // jax.process_count(),
            pad_id=ctx.pad_id,
        )
    elif scfg.loss.stage_kind == "cut" and scfg.loss.cut.judge is not None:
        from alignjax.online.online_cut import OnlineCutSource

        prompts = make_pipeline(dataclasses.replace(dcfg, record_type="prompt"), ctx.tokenizer)
        pipeline = OnlineCutSource(
            prompts,
            dcfg,
            ctx.tokenizer,
            ctx.model_cfg,
            scfg.loss.cut.judge,
            scfg.loss.cut.sampling,
            seed=scfg.seed + stage_index,
            per_host_batch=micro_batch // jax.process_count(),
            pad_id=ctx.pad_id,
        )
    else:
        pipeline = make_pipeline(dcfg, ctx.tokenizer)
    info = {
        "num_conditions": len(pipeline.condition_vocab) if pipeline.condition_vocab is not None else 0,
        "num_users": len(pipeline.user_vocab) + 1 if pipeline.user_vocab is not None else 1,
        "n_user_tokens": scfg.data.n_user_tokens,
    }
    objective = objectives.make_objective(ctx.model_cfg, scfg.loss, info)
    lr_at = schedule(scfg.optim, n_steps)
    tx = make_optimizer(scfg.optim, n_steps)
    if objective.wrap_optimizer is not None:
        tx = objective.wrap_optimizer(tx, lr_at)
    extra_shapes = jax.eval_shape(objective.init_extra, jax.random.key(0), decoder_shapes)
    param_shapes = {**decoder_shapes, **extra_shapes}
    # The objective's own parts are small: replicated.
    param_shardings = {
        **ctx.param_shardings,
        **jax.tree.map(lambda _: sharding.replicated(ctx.mesh), extra_shapes),
    }
    opt_shapes = jax.eval_shape(tx.init, param_shapes)
    opt_shardings = _opt_shardings(opt_shapes, param_shapes, param_shardings, ctx.mesh)
    return StageSetup(
        pipeline, objective, tx, lr_at, param_shapes, param_shardings, opt_shapes, opt_shardings
    )


def _next_batch(pipeline, params, ctx: "RunContext", step: int):
    """The next local batch; online sources sample it from the current policy."""
    if hasattr(pipeline, "next_for"):
        return pipeline.next_for({k: v for k, v in params.items() if k in ctx.param_shardings}, step)
    return next(pipeline)


class _Stopper:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: checkpointing the current step, then exiting")
        self.requested = True

    def agreed(self) -> bool:
        """Whether any process got SIGTERM: processes must checkpoint (a collective) at the
        same step, and the signal reaches each of them at its own time."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.max(multihost_utils.process_allgather(np.array([int(self.requested)]))))

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _write_run_config(cfg: TrainConfig) -> None:
    """The resolved config (overrides applied), so generate / eval render prompts as training did."""
    if jax.process_index() != 0:
        return
    import yaml

    from alignjax import configlib

    tree = getattr(cfg, "_tree", None) or configlib.to_dict(cfg)
    with open(os.path.join(cfg.run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(tree, f, sort_keys=False)


def _run_stage(
    ctx: RunContext,
    stage: Stage,
    stage_index: int,
    params,
    step: int,
    restored: dict | None,
    stopper: _Stopper,
):
    scfg = stage.config
    process_count = jax.process_count()
    decoder_params = {k: v for k, v in params.items() if k in ctx.param_shardings}
    # Before the data pipeline starts: a missing table is the error a user meets first.
    tables = _stage_tables(ctx, stage, decoder_params, resuming=restored is not None)
    setup = _stage_setup(ctx, stage, stage_index, jax.eval_shape(lambda p: p, decoder_params))
    pipeline, objective, tx, lr_at = setup.pipeline, setup.objective, setup.tx, setup.lr_at
    base_rng = jax.random.fold_in(jax.random.key(ctx.cfg.seed), stage_index)

    ref_params = None
    if objective.needs_reference and tables is None:
        ref_params = _stage_reference(ctx, stage, decoder_params, resuming=restored is not None)
    if restored is not None:
        opt_state = restored["opt_state"]
        loss_state = _loss_state_from_json(restored["loop"]["loss_state"], objective.init_state())
        pipeline.set_state(restored["loop"]["data_state"][jax.process_index()])
    else:
        missing = {
            k: v
            for k, v in objective.init_extra(jax.random.fold_in(base_rng, 2**31 - 1), decoder_params).items()
            if k not in params
        }
        params = jax.device_put({**params, **missing}, setup.param_shardings)
        opt_state = jax.jit(tx.init, out_shardings=setup.opt_shardings)(params)
        loss_state = objective.init_state()

    # Model FLOPs per trained token: forward + backward (6N) plus a reference forward (2N).
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(decoder_params))
    flops_per_token = (6 + (2 if ref_params is not None else 0)) * n_params
    peak = device_peak_flops()

    grads_fn = jax.jit(step_lib.make_grads_fn(objective), out_shardings=(setup.param_shardings, None, None))
    update_fn = jax.jit(
        step_lib.make_update_fn(tx),
        donate_argnums=(0, 1),
        out_shardings=(setup.param_shardings, setup.opt_shardings, None),
    )
    add_fn = jax.jit(step_lib.add_trees, donate_argnums=(0,), out_shardings=setup.param_shardings)
    eval_fn = jax.jit(step_lib.make_eval_fn(objective))

    def checkpoint(at_step: int):
        loop_state = {
            "step": at_step,
            "stage": stage.name,
            "stage_index": stage_index,
            "data_state": gather_states(pipeline.get_state()),
            "loss_state": _loss_state_to_json(loss_state),
            "skipped_steps": skipped_total,
        }
        ctx.checkpointer.save(at_step, params, opt_state, loop_state, ctx.model_meta, ctx.tokenizer_dir)

    bar = ProgressBar(
        stage.last_step,
        initial=step,
        is_primary=jax.process_index() == 0,
        enabled=None if ctx.cfg.logging.progress_bar else False,
    )
    window_tokens, window_start = 0, time.perf_counter()
    skipped_total = int(restored["loop"].get("skipped_steps", 0)) if restored else 0
    log.info("stage %s: steps %d..%d, loss %s", stage.name, stage.first_step, stage.last_step, scfg.loss.type)
    try:
        while step < stage.last_step:
            grads = metric_sums = None
            n_micro = 0
            for micro in range(scfg.train.grad_accum):
                local = _next_batch(pipeline, params, ctx, step * scfg.train.grad_accum + micro)
                if not everywhere(local is not None):
                    continue  # an online source found nothing to learn from (all samples tied)
                n_micro += 1
                window_tokens += int(np.sum(local.segment_ids_BxL > 0)) * process_count
                if tables:
                    local = tables["data.train"].attach(local)
                batch = global_batch(local, ctx.mesh, ctx.pad_id)
                rng = jax.random.fold_in(jax.random.fold_in(base_rng, step), micro)
                micro_grads, micro_metrics, loss_state = grads_fn(params, ref_params, batch, loss_state, rng)
                grads = micro_grads if grads is None else add_fn(grads, micro_grads)
                metric_sums = (
                    micro_metrics
                    if metric_sums is None
                    else jax.tree.map(jnp.add, metric_sums, micro_metrics)
                )
            if n_micro == 0:
                # Nothing to learn from this step: no update, counted like a non-finite step.
                metrics, stats = {}, {"grad_norm": 0.0, "skipped": 1}
                skipped_total += 1
                log.warning(
                    "step %d: no training pairs (the policy's samples all tied); update skipped", step
                )
            else:
                # Logged values are means over the step's micro-batches, as TRL logs them.
                metrics = {
                    k: v if k.startswith("count_") or k.endswith("/counts") else v / n_micro
                    for k, v in metric_sums.items()
                }
                if n_micro > 1:
                    grads = jax.tree.map(lambda g: g / n_micro, grads)
                params, opt_state, stats = update_fn(params, opt_state, grads, metrics["loss"])
                skipped_total += int(stats["skipped"])
                if int(stats["skipped"]):
                    log.warning(
                        "step %d: non-finite loss or gradient; update skipped (%d so far)",
                        step,
                        skipped_total,
                    )
            step += 1
            local_step = step - stage.first_step

            if step % scfg.train.log_every == 0 or step == stage.last_step:
                elapsed = time.perf_counter() - window_start
                record = _scalars(metrics)
                record.update(
                    grad_norm=float(stats["grad_norm"]),
                    lr=float(lr_at(local_step - 1)),
                    tokens_per_sec=window_tokens / max(elapsed, 1e-9),
                    skipped_steps=skipped_total,
                    stage=stage_index,
                )
                if peak is not None:
                    record["mfu"] = record["tokens_per_sec"] * flops_per_token / (peak * jax.device_count())
                record.update(pipeline.metrics())
                if "rewards/accuracies_by_condition" in metrics:
                    acc = np.asarray(metrics["rewards/accuracies_by_condition"])
                    count = np.asarray(metrics["count_by_condition"])
                    for cid in range(1, len(acc)):
                        if count[cid] > 0:
                            record[f"rewards/accuracies/{pipeline.condition_vocab.keys[cid - 1]}"] = float(
                                acc[cid]
                            )
                if "per_user/accuracies" in metrics and pipeline.user_vocab is not None:
                    acc = np.asarray(metrics["per_user/accuracies"])
                    count = np.asarray(metrics["per_user/counts"])
                    names = ["generic", *pipeline.user_vocab.keys]
                    record.update(
                        {
                            f"rewards/accuracies/user/{names[u]}": float(acc[u])
                            for u in range(len(acc))
                            if count[u] > 0
                        }
                    )
                ctx.writer.write(step, record)
                bar.update(step, record)
                window_tokens, window_start = 0, time.perf_counter()

            at_end = step == stage.last_step
            if scfg.train.eval_every and step % scfg.train.eval_every == 0 or at_end:
                eval_metrics = evaluate(ctx, stage, eval_fn, params, ref_params, loss_state, base_rng, tables)
                if eval_metrics:
                    ctx.writer.write(step, eval_metrics, prefix="eval/")
                    log.info(
                        "step %d eval: %s",
                        step,
                        ", ".join(f"{k}={v:.4g}" for k, v in sorted(eval_metrics.items())),
                    )
            stop = stopper.agreed()
            if step % scfg.train.save_every == 0 or at_end or stop:
                checkpoint(step)
            if stop:
                ctx.checkpointer.wait()
                raise Preempted(step)
    finally:
        bar.close()
        pipeline.close()
    return params, step


def _scalars(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}


def _loss_state_to_json(state) -> Any:
    return jax.tree.map(lambda x: np.asarray(x).tolist(), jax.device_get(state))


def _loss_state_from_json(data, template):
    leaves = jax.tree.leaves(data)
    return jax.tree.unflatten(jax.tree.structure(template), [np.asarray(v) for v in leaves])


def _stage_reference(ctx: RunContext, stage: Stage, params, resuming: bool):
    """The frozen reference of a stage: its starting parameters, saved once so resumes agree.

    Saved and restored as sharded arrays (parameters may span processes), onto the
    current mesh, which need not be the one it was saved from.
    """
    root = os.path.join(ctx.cfg.run_dir, "reference", stage.name)
    # The previous stage's last checkpoint may still be finishing in the background. Orbax
    # names its cross-process barriers the same in every manager, so a second manager
    # saving meanwhile can pair with the wrong barrier on another process and hang.
    ctx.checkpointer.wait()
    abstract = _abstract(jax.eval_shape(lambda p: p, params), ctx.param_shardings)
    ref = ckpt_lib.restore_reference(root, abstract)
    if ref is not None:
        return ref
    if resuming:
        raise ValueError(
            f"{root}: stage {stage.name!r} resumes at a checkpoint inside it, but its frozen reference "
            "(the parameters the stage started from) was never committed there; restore that directory, "
            "or delete the stage's checkpoints to restart the stage"
        )
    # A copy: the training step donates `params`.
    ref = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=ctx.param_shardings)(params)
    ckpt_lib.save_reference(root, ref, ctx.model_meta)
    return ref


def _stage_tables(ctx: RunContext, stage: Stage, params, resuming: bool):
    """`loss.reference: precomputed`: the stage's reference log-probs by data set (else None).

    Each table is named by the fingerprint of the model the stage starts from and of its
    data. The model part is recorded when the stage starts, so a run resumed inside the
    stage (whose parameters have moved on) still asks for the tables it started with.
    """
    from alignjax.train import precompute

    if not precompute.uses_table(stage.config.loss):
        return None
    record = os.path.join(ctx.cfg.run_dir, precompute.TABLE_DIR, "stages", f"{stage.name}.json")
    if resuming:
        if not os.path.exists(record):
            raise ValueError(
                f"{record}: stage {stage.name!r} resumes inside itself with loss.reference=precomputed, but the "
                "model it started from was never recorded there; restore that file, or delete the stage's "
                "checkpoints to restart the stage"
            )
        with open(record) as f:
            model_id = json.load(f)
    else:
        model_id = precompute.model_identity(ctx.model_meta["hf_config"], ctx.model_cfg, params, ctx.mesh)
        if jax.process_index() == 0:
            precompute.write_json(record, model_id)
    argv = getattr(ctx.cfg, "_argv", None) or ("CONFIG",)
    command = " ".join(["alignjax precompute-ref", *argv])
    batch_size = stage.config.train.batch_size // stage.config.train.grad_accum
    return {
        label: precompute.load_table(
            ctx.cfg.run_dir,
            model_id,
            precompute.data_identity(dcfg, ctx.tokenizer),
            what=f"stage {stage.name!r} {label}",
            command=command,
        )
        for label, dcfg in precompute.data_sets(stage.config, ctx.data_dir, batch_size)
    }


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train; returns a summary (final step and the last logged eval metrics)."""
    sharding.maybe_initialize_distributed()
    os.makedirs(cfg.run_dir, exist_ok=True)
    _write_run_config(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    data_dir = prepare_builtin_data(cfg)
    all_stages = stages(cfg)

    from alignjax.data.byte_tokenizer import VOCAB_SIZE

    rng = jax.random.key(cfg.seed)
    loaded = load_model(cfg.model, rng, vocab_size=VOCAB_SIZE if cfg.model.preset else None)
    tokenizer, tokenizer_dir = tokenizer_for(loaded, cfg.run_dir)
    model_cfg = loaded.cfg
    param_shapes = jax.eval_shape(lambda p: p, loaded.params)
    logical = decoder.logical_axes(model_cfg)
    param_shardings = sharding.tree_shardings(logical, param_shapes, mesh)

    ctx = RunContext(
        cfg=cfg,
        mesh=mesh,
        model_cfg=model_cfg,
        model_meta=loaded.meta,
        tokenizer=tokenizer,
        tokenizer_dir=tokenizer_dir,
        param_shardings=param_shardings,
        writer=MetricsWriter(
            cfg.run_dir,
            tensorboard=cfg.logging.tensorboard,
            wandb=cfg.logging.wandb,
            is_primary=jax.process_index() == 0,
        ),
        checkpointer=ckpt_lib.TrainCheckpointer(
            cfg.run_dir, keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpointing
        ),
        data_dir=data_dir,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    step, params, restored = _restore(ctx, all_stages, loaded.params)
    if step:
        ctx.writer.truncate_after(step)
        log.info("resumed from %s at step %d", ctx.checkpointer.root, step)
    stopper = _Stopper()
    try:
        for index, stage in enumerate(all_stages):
            if step >= stage.last_step:
                continue
            stage_restored = (
                restored
                if restored and restored["loop"]["stage_index"] == index and step > stage.first_step
                else None
            )
            params, step = _run_stage(ctx, stage, index, params, step, stage_restored, stopper)
            restored = None
    finally:
        stopper.restore()
        ctx.checkpointer.close()
        ctx.writer.close()
    return {"step": step}


def _restore(ctx: RunContext, all_stages: list[Stage], init_params):
    """(step, params, restored) from the newest good checkpoint, or a fresh start."""
    decoder_shapes = jax.eval_shape(lambda p: p, init_params)
    failed: list[tuple[int, str]] = []
    for step in reversed(ctx.checkpointer.steps()):
        error = None
        try:
            loop_state = ctx.checkpointer.restore_loop(step)
            index = loop_state["stage_index"]
            setup = _stage_setup(ctx, all_stages[index], index, decoder_shapes)
            setup.pipeline.close()
            params, opt_state = ctx.checkpointer.restore_arrays(
                step,
                _abstract(setup.param_shapes, setup.param_shardings),
                _abstract(setup.opt_shapes, setup.opt_shardings),
            )
        except Exception as e:  # a partial or corrupt step must not end the run
            error = f"{type(e).__name__}: {e}"
        if not everywhere(error is None):  # every process resumes from the same step
            error = error or "another process could not restore it"
            log.warning(
                "checkpoint step %d in %s does not restore (%s); trying an older one",
                step,
                ctx.checkpointer.root,
                error,
            )
            failed.append((step, error))
            continue
        for bad, _ in failed:
            log.warning(
                "checkpoint step %d moved to %s: it does not restore, and the resumed run "
                "will save that step again",
                bad,
                ctx.checkpointer.set_aside(bad),
            )
        return step, params, {"opt_state": opt_state, "loop": loop_state}
    if failed:
        # Starting over would silently train from scratch and then overwrite these steps.
        raise ValueError(
            f"{ctx.checkpointer.root}: no checkpoint restores ("
            + "; ".join(f"step {s}: {e}" for s, e in failed)
            + "). If the config changed since they were written, restore it; to start over, "
            "move that directory away or set run_dir to a new directory"
        )
    params = jax.device_put(init_params, ctx.param_shardings)
    return 0, params, None
