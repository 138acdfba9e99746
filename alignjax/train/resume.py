"""Resume: the newest checkpoint that restores on every process, or a fresh start."""

from __future__ import annotations

import logging

import jax

from alignjax.models.parts import DECODER, LORA
from alignjax.train.bootstrap import RunSetup
from alignjax.train.config import Stage
from alignjax.train.multihost import everywhere
from alignjax.train.reference import abstract_arrays
from alignjax.train.stage import open_train_source, plan_stage_of, stage_sizes

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


def restore(run: RunSetup, checkpointer, all_stages: list[Stage]):
    """(step, params, restored) from the newest good checkpoint, or (0, initial params, None)."""
    failed: list[tuple[int, str]] = []
    for step in reversed(checkpointer.steps()):
        error = None
        try:
            loop_state = checkpointer.restore_loop(step)
            if not checkpointer.params_grouped(step):
                raise ValueError(
                    "it was written before trained parameters were grouped as {decoder, <parts>}; "
                    "export it (`alignjax convert orbax-to-hf` reads either layout) and start a new run from "
                    "the export with model.hf_path, or finish this run with the release that wrote it"
                )
            index = loop_state["stage_index"]
            stage = all_stages[index]
            plan = plan_stage_of(run, stage, saved_sizes(run, stage, index))
            params, opt_state = checkpointer.restore_arrays(
                step,
                abstract_arrays(plan.param_shapes, plan.param_shardings),
                abstract_arrays(plan.opt_shapes, plan.opt_shardings),
            )
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
        return step, params, {"opt_state": opt_state, "loop": loop_state}
    if failed:
        # Starting over would silently train from scratch and then overwrite these steps.
        raise ValueError(
            f"{checkpointer.root}: no checkpoint restores ("
            + "; ".join(f"step {s}: {e}" for s, e in failed)
            + "). If the config changed since they were written, restore it; to start over, "
            "move that directory away or set run_dir to a new directory"
        )
    if run.model_cfg.lora_rank:
        return 0, {LORA: initial_adapters(run)}, None
    # A classifier's score head starts the stages whose method trains one (`start_stage`).
    return 0, {DECODER: jax.device_put(run.loaded.params, run.param_shardings), **run.loaded.parts}, None


def initial_adapters(run: RunSetup):
    """A LoRA run's first adapters: `model.lora.from_peft`, or fresh (PEFT's init, B = 0)."""
    from alignjax.models import decoder
    from alignjax.train.stage import adapter_layout

    _, shardings = adapter_layout(run.model_cfg, run.mesh)
    section = run.cfg.model.lora
    if section.from_peft is not None:
        from alignjax.convert.peft import adapters_from_peft_dir

        adapters = adapters_from_peft_dir(section.from_peft, run.model_cfg)
    else:
        adapters = decoder.init_adapters(run.model_cfg, jax.random.fold_in(jax.random.key(run.cfg.seed), 7))
    return jax.device_put(adapters, shardings)
