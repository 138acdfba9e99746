"""Training checkpoints: `TrainState` and `LoopState` on disk, written and read here only.

`<run_dir>/checkpoints/<step>/` holds `params` and `model` exactly like a converted
model (so `alignjax convert orbax-to-hf` exports a run directly), plus `opt_state`,
`loop` (JSON: step, stage, every process's data-iterator state, the method state as
`loss_state`, the skipped-update count), and `reference` when the stage's reference
moves (TR-DPO). The RNG is not saved: a stage's key follows from the seed.
Saves are asynchronous and the last `keep` steps are kept; the trainer restores the
newest step that restores cleanly and warns about any newer one that does not.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from alignjax.convert import model_checkpoint as mc
from alignjax.core import paths
from alignjax.models.parts import is_grouped
from alignjax.train.multihost import primary_decides
from alignjax.train.state import LoopState, TrainState

OPT_ITEM = "opt_state"
LOOP_ITEM = "loop"
# A stage's reference when it moves during training (TR-DPO, `train/reference_sync.py`).
REFERENCE_ITEM = "reference"


def _method_state_to_json(method_state) -> Any:
    return jax.tree.map(lambda x: np.asarray(x).tolist(), jax.device_get(method_state))


def _method_state_from_json(saved, like):
    """The saved method state's values in `like`'s structure, each placed as its leaf says."""
    values, leaves = jax.tree.leaves(saved), jax.tree.leaves(like)
    if len(values) != len(leaves):
        raise ValueError(
            f"its loss_state has {len(values)} values where the stage's method keeps {len(leaves)}"
        )
    placed = [jax.device_put(np.asarray(v, x.dtype), x.sharding) for v, x in zip(values, leaves, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(like), placed)


def _loop_json(state: TrainState, loop: LoopState) -> dict[str, Any]:
    return {
        "step": loop.step,
        "stage": loop.stage_name,
        "stage_index": loop.stage_index,
        "data_state": loop.data_state,
        "loss_state": _method_state_to_json(state.method_state),
        "skipped_steps": int(jax.device_get(state.counters["skipped"])),
    }


class TrainCheckpointer:
    """`model_meta` (and the tokenizer, copied once) make every step a model checkpoint too."""

    def __init__(
        self,
        run_dir: str,
        model_meta: dict[str, Any],
        *,
        tokenizer_dir: str | None = None,
        keep: int = 3,
        async_save: bool = True,
    ):
        self.root = paths.abspath(paths.join(run_dir, "checkpoints"))
        self.model_meta, self.tokenizer_dir = model_meta, tokenizer_dir
        self.manager = ocp.CheckpointManager(
            self.root,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def save(self, state: TrainState, loop: LoopState, *, reference_moves: bool) -> None:
        """The step `loop.step`. `reference_moves`: the stage's reference changes as it trains
        (TR-DPO) and is saved with every step; a frozen one is saved once per stage
        (`save_reference`). Every process calls this."""
        moving = {REFERENCE_ITEM: ocp.args.StandardSave(state.reference)} if reference_moves else {}
        if (
            self.tokenizer_dir is not None
            and jax.process_index() == 0
            and mc.tokenizer_path(self.root) is None
        ):
            mc.copy_tokenizer(self.tokenizer_dir, self.root)
        self.manager.save(
            loop.step,
            args=ocp.args.Composite(
                **{
                    mc.PARAMS_ITEM: ocp.args.StandardSave(state.params),
                    OPT_ITEM: ocp.args.StandardSave(state.opt_state),
                    LOOP_ITEM: ocp.args.JsonSave(_loop_json(state, loop)),
                    mc.MODEL_ITEM: ocp.args.JsonSave(self.model_meta),
                    **moving,
                }
            ),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def set_aside(self, step: int) -> str:
        """Move a step that does not restore out of the way (kept for inspection): otherwise
        the resumed run, reaching that step again, could not save it."""
        dest = paths.join(paths.dirname(self.root), "checkpoints_unrestorable", str(step))
        if jax.process_index() == 0:
            if paths.exists(dest):
                paths.rmtree(dest)
            paths.makedirs(paths.dirname(dest))
            paths.replace(paths.join(self.root, str(step)), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"alignjax set aside checkpoint {step}")
        self.manager.reload()
        return dest

    def restore_loop(self, step: int) -> LoopState:
        """Where the run was at one step (cheap: decides which stage's state to build).

        Raises ValueError for a step whose parameters are not grouped as
        {"decoder": ..., <part>: ...}: this release cannot resume it."""
        saved = self.manager.restore(step, args=ocp.args.Composite(**{LOOP_ITEM: ocp.args.JsonRestore()}))[
            LOOP_ITEM
        ]
        item_dir = paths.join(self.root, str(step), mc.PARAMS_ITEM)
        if not is_grouped(ocp.PyTreeCheckpointer().metadata(item_dir).item_metadata.tree):
            raise ValueError(
                "it was written before trained parameters were grouped as {decoder, <parts>}; "
                "export it (`alignjax convert orbax-to-hf` reads either layout) and start a new run from "
                "the export with model.hf_path, or finish this run with the release that wrote it"
            )
        return LoopState(
            step=saved["step"],
            stage_index=saved["stage_index"],
            stage_name=saved["stage"],
            skipped=int(saved.get("skipped_steps", 0)),
            data_state=saved["data_state"],
        )

    def restore_state(self, step: int, like: TrainState) -> TrainState:
        """The `TrainState` of one step, each array placed as `like`'s says.

        `like` holds jax.ShapeDtypeStructs carrying the target shardings (so a checkpoint
        written on one mesh restores onto another): params, opt_state, method_state,
        counters, and the reference where it moves (else None: a frozen reference is the
        stage's own save). Its rng is kept: the stage's key is not saved.
        """
        items = {
            mc.PARAMS_ITEM: ocp.args.StandardRestore(like.params),
            OPT_ITEM: ocp.args.StandardRestore(like.opt_state),
            LOOP_ITEM: ocp.args.JsonRestore(),
        }
        if like.reference is not None:
            items[REFERENCE_ITEM] = ocp.args.StandardRestore(like.reference)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        saved = restored[LOOP_ITEM]
        counters = {"step": saved["step"], "skipped": saved.get("skipped_steps", 0)}
        return TrainState(
            params=restored[mc.PARAMS_ITEM],
            opt_state=restored[OPT_ITEM],
            reference=restored[REFERENCE_ITEM] if like.reference is not None else None,
            method_state=_method_state_from_json(saved["loss_state"], like.method_state),
            counters={k: jax.device_put(np.int32(v), like.counters[k].sharding) for k, v in counters.items()},
            rng=like.rng,
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def recorded_stage(root: str, step: int) -> str | None:
    """The stage that wrote training checkpoint `step` under `root` (None for a model
    checkpoint without loop state, such as one `alignjax convert` wrote)."""
    path = paths.join(root, str(step), LOOP_ITEM, "metadata")
    if not paths.exists(path):
        return None
    with paths.open(path) as f:
        return json.load(f).get("stage")


def save_reference(root: str, params: Any, model_meta: dict[str, Any]) -> None:
    """A stage's frozen reference, as a model checkpoint (step 0) under `root`.

    `params` may be sharded over several processes: every process calls this.
    """
    mc.save_model(root, params, model_meta, step=0)


def restore_reference(root: str, abstract_params: Any) -> Any | None:
    """The reference saved under `root`, placed as `abstract_params` says; None if none was
    committed (a save cut short leaves only Orbax's temporary directory, which is ignored).

    Every process calls this; they agree on process 0's view of the directory, since the
    answer decides whether a (collective) save follows."""
    if not primary_decides(paths.isdir(root)):
        return None
    manager = ocp.CheckpointManager(paths.abspath(root), options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(
            step, args=ocp.args.Composite(**{mc.PARAMS_ITEM: ocp.args.StandardRestore(abstract_params)})
        )
    finally:
        manager.close()
    return restored[mc.PARAMS_ITEM]
