"""Training checkpoints: the model checkpoint layout plus optimizer and loop state.

`<run_dir>/checkpoints/<step>/` holds `params` and `model` exactly like a converted
model (so `alignjax convert orbax-to-hf` exports a run directly), plus `opt_state`,
`loop` (JSON: step, stage, every process's data-iterator state, loss state, counters), and
`reference` when the stage's reference moves (TR-DPO).
Saves are asynchronous and the last `keep` steps are kept; the trainer restores the
newest step that restores cleanly and warns about any newer one that does not.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from alignjax import paths
from alignjax.convert import model_checkpoint as mc
from alignjax.models.parts import is_grouped
from alignjax.train.multihost import primary_decides

OPT_ITEM = "opt_state"
LOOP_ITEM = "loop"
# A stage's reference when it moves during training (TR-DPO, `train/reference_sync.py`).
REFERENCE_ITEM = "reference"


class TrainCheckpointer:
    def __init__(self, run_dir: str, *, keep: int = 3, async_save: bool = True):
        self.root = paths.abspath(paths.join(run_dir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.root,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def save(
        self,
        step: int,
        params: Any,
        opt_state: Any,
        loop_state: dict[str, Any],
        model_meta: dict[str, Any],
        tokenizer_dir: str | None = None,
        reference: Any = None,
    ) -> None:
        """`reference`: the stage's moving reference, saved beside the parameters; None when
        it is frozen (saved once per stage, `save_reference`)."""
        moving = {} if reference is None else {REFERENCE_ITEM: ocp.args.StandardSave(reference)}
        if tokenizer_dir is not None and jax.process_index() == 0 and mc.tokenizer_path(self.root) is None:
            mc.copy_tokenizer(tokenizer_dir, self.root)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    mc.PARAMS_ITEM: ocp.args.StandardSave(params),
                    OPT_ITEM: ocp.args.StandardSave(opt_state),
                    LOOP_ITEM: ocp.args.JsonSave(loop_state),
                    mc.MODEL_ITEM: ocp.args.JsonSave(model_meta),
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

    def restore_loop(self, step: int) -> dict[str, Any]:
        """The loop state of one step (cheap: decides which stage's optimizer to build)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(**{LOOP_ITEM: ocp.args.JsonRestore()}))
        return restored[LOOP_ITEM]

    def params_grouped(self, step: int) -> bool:
        """Whether the step's parameters are grouped as {"decoder": ..., <part>: ...}."""
        item_dir = paths.join(self.root, str(step), mc.PARAMS_ITEM)
        tree = ocp.PyTreeCheckpointer().metadata(item_dir).item_metadata.tree
        return is_grouped(tree)

    def restore_arrays(self, step: int, abstract_params: Any, abstract_opt_state: Any):
        """(params, opt_state) of one step, placed as the abstract trees' shardings say.

        `abstract_*` are trees of jax.ShapeDtypeStruct carrying the target shardings, so a
        checkpoint written on one mesh restores onto another.
        """
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    mc.PARAMS_ITEM: ocp.args.StandardRestore(abstract_params),
                    OPT_ITEM: ocp.args.StandardRestore(abstract_opt_state),
                }
            ),
        )
        return restored[mc.PARAMS_ITEM], restored[OPT_ITEM]

    def restore_reference_item(self, step: int, abstract_reference: Any):
        """The moving reference saved with one step, placed as `abstract_reference` says."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{REFERENCE_ITEM: ocp.args.StandardRestore(abstract_reference)})
        )
        return restored[REFERENCE_ITEM]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
