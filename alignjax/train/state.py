"""What a run carries from one step to the next: `TrainState` on the device, `LoopState`
on the host.

`TrainState` is everything the training step reads and writes; the step takes it and
returns it (`train/step.py`). `LoopState` is what the loop keeps between steps: where it
is, what it has logged and what it is measuring. Only `train/checkpoint.py` writes them
to disk and reads them back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from alignjax.train.log_record import PendingLog


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    # {"decoder" | "lora": ..., <part>: ...}: what the optimizer trains.
    params: Any
    opt_state: Any
    # The decoder the objective compares against (LoRA: the frozen base, with the adapters
    # the stage started from); None where the objective needs none. It changes during a
    # stage only under TR-DPO (`loss.sync_ref_model`).
    reference: Any
    # The objective's state across steps (bco_pair's running reward mean); {} for most.
    method_state: Any
    # "step": the global step (the RNG folds it in); "skipped": updates skipped so far.
    counters: dict[str, jax.Array]
    # The stage's key: micro-batch m of step s draws from fold_in(fold_in(rng, s), m).
    rng: jax.Array

    def replace(self, **changes: Any) -> TrainState:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class Window:
    """What the steps since the last logged one trained on, for tokens/s and MFU."""

    first_step: int = 0
    start: float = 0.0  # time.perf_counter() when the previous logged step's values were read
    tokens: int = 0
    flops: float = 0.0


@dataclasses.dataclass
class LoopState:
    """The loop's position and bookkeeping between steps."""

    step: int  # the global step: steps done, over all stages
    stage_index: int
    stage_name: str
    skipped: int = 0  # skipped updates as last read from the device
    # Every process's data-iterator state: as restored (the stage's source resumes from it),
    # and as gathered for each save. Between saves the source itself holds its position.
    data_state: list[dict] = dataclasses.field(default_factory=list)
    window: Window = dataclasses.field(default_factory=Window)
    # The last logging step's record, read once the next step is dispatched.
    pending: PendingLog | None = None
