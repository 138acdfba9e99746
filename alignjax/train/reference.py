"""A stage's reference: the frozen parameters it started from, or precomputed tables.

The frozen reference is saved once per stage, so a resumed run compares against exactly
the model the uninterrupted run did. With `loss.reference: precomputed` the stage holds
no reference model; the tables it reads are named by the fingerprint of the model it
started from (recorded when it starts, since a resumed run's parameters have moved on)
and of each data set.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from alignjax.core import paths
from alignjax.core.fileio import atomic_write_json
from alignjax.models.lora import Adapted
from alignjax.train import checkpoint as ckpt_lib
from alignjax.train.bootstrap import RunSetup
from alignjax.train.config import LossSection, Stage
from alignjax.train.datasets import StageData
from alignjax.train.fingerprints import data_identity, model_identity
from alignjax.train.methods import Objective, method_for
from alignjax.train.multihost import primary_decides
from alignjax.train.reference_table import TABLE_DIR, ReferenceTable, load_table, write_json


def uses_table(loss: LossSection) -> bool:
    """Whether a stage with this loss reads precomputed reference log-probs."""
    return loss.reference == "precomputed" and method_for(loss).reads_reference_table(loss)


def runs_reference_forward(objective: Objective, loss: LossSection) -> bool:
    """Whether a step of this objective runs a frozen reference's forward (its model FLOPs
    count one): the loss needs reference log-probs and reads no precomputed table. A LoRA
    step holds its frozen base either way; that base's forward is the policy's own."""
    return objective.needs_reference and not uses_table(loss)


def abstract_arrays(shapes, shardings):
    """ShapeDtypeStructs carrying their target sharding (what Orbax restores onto)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def frozen_reference(run: RunSetup, checkpointer, stage: Stage, params, resuming: bool):
    """The stage's starting decoder parameters in `model.reference_dtype`, saved once so
    resumes agree.

    Saved and restored as sharded arrays (parameters may span processes), onto the
    current mesh, which need not be the one it was saved from.
    """
    root = paths.join(run.cfg.run_dir, "reference", stage.name)
    # The previous stage's last checkpoint may still be finishing in the background. Orbax
    # names its cross-process barriers the same in every manager, so a second manager
    # saving meanwhile can pair with the wrong barrier on another process and hang.
    checkpointer.wait()
    dtype = jnp.dtype(run.cfg.model.effective_reference_dtype)
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, dtype), params)
    ref = ckpt_lib.restore_reference(root, abstract_arrays(shapes, run.param_shardings))
    if ref is not None:
        return ref
    if resuming:
        raise ValueError(
            f"{root}: stage {stage.name!r} resumes at a checkpoint inside it, but its frozen reference "
            "(the parameters the stage started from) was never committed there; restore that directory, "
            "or delete the stage's checkpoints to restart the stage"
        )
    # A copy (the training step donates `params`), in model.reference_dtype.
    ref = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p), out_shardings=run.param_shardings)(
        params
    )
    ckpt_lib.save_reference(root, ref, run.model_meta)
    return ref


def lora_reference(run: RunSetup, checkpointer, stage: Stage, start_adapters, layout, resuming: bool):
    """A LoRA stage's reference: the frozen base with the adapters the stage started from,
    or the base alone (adapters off) when it started from fresh ones, whose update is zero.
    Only adapters are saved, under <run_dir>/reference/<stage>; the base is never copied.

    `start_adapters`: None for fresh adapters; `layout`: the adapters' (shapes, shardings).
    """
    root = paths.join(run.cfg.run_dir, "reference", stage.name)
    adapters_off = root + ".adapters_off.json"
    checkpointer.wait()  # see frozen_reference: Orbax barriers must not interleave
    if primary_decides(paths.exists(adapters_off)):
        return run.frozen_base
    shapes, shardings = layout
    saved = ckpt_lib.restore_reference(root, abstract_arrays(shapes, shardings))
    if saved is not None:
        return Adapted(run.frozen_base, saved)
    if resuming:
        raise ValueError(
            f"{root}: stage {stage.name!r} resumes at a checkpoint inside it, but the adapters it started "
            "from were never committed there; restore that directory, or delete the stage's checkpoints "
            "to restart the stage"
        )
    if start_adapters is None:
        if jax.process_index() == 0:
            atomic_write_json(adapters_off, {"reference": "the base model with adapters off"})
        return run.frozen_base
    ref = jax.jit(lambda a: jax.tree.map(jnp.copy, a), out_shardings=shardings)(start_adapters)
    ckpt_lib.save_reference(root, ref, run.model_meta)
    return Adapted(run.frozen_base, ref)


def reference_tables(
    run: RunSetup, stage: Stage, data: StageData, params, resuming: bool
) -> dict[str, ReferenceTable] | None:
    """`loss.reference: precomputed`: the stage's tables by data-set label (else None)."""
    if not uses_table(stage.config.loss):
        return None
    record = paths.join(run.cfg.run_dir, TABLE_DIR, "stages", f"{stage.name}.json")
    if resuming:
        if not paths.exists(record):
            raise ValueError(
                f"{record}: stage {stage.name!r} resumes inside itself with loss.reference=precomputed, but the "
                "model it started from was never recorded there; restore that file, or delete the stage's "
                "checkpoints to restart the stage"
            )
        with paths.open(record) as f:
            model_id = json.load(f)
    else:
        model_id = model_identity(run.model_meta["hf_config"], run.model_cfg, params, run.mesh)
        if jax.process_index() == 0:
            write_json(record, model_id)
    argv = getattr(run.cfg, "_argv", None) or ("CONFIG",)
    command = " ".join(["alignjax precompute-ref", *argv])
    return {
        label: load_table(
            run.cfg.run_dir,
            model_id,
            data_identity(dcfg, run.tokenizer),
            what=f"stage {stage.name!r} {label}",
            command=command,
        )
        for label, dcfg in data.tables
    }
