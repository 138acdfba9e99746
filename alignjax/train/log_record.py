"""One logged line of training: a step's device metrics, read on the host one step late.

`PendingLog` holds a logging step's metrics (still on the device) and the host-side
numbers measured when it was dispatched; the loop resolves it after dispatching the next
step, so the device is never idle waiting for the host to read.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np

log = logging.getLogger("alignjax.train")


@dataclasses.dataclass
class PendingLog:
    step: int
    metrics: dict[str, jax.Array]  # the step's metrics; {} when its update was skipped on the host
    counters: dict[str, jax.Array]
    host: dict[str, float]  # lr, stage, data/... counters
    tokens: int  # tokens trained on since the previous logged step
    steps: int  # steps since the previous logged step
    flops: float  # model FLOPs of those steps (models/flops.py)


def resolve(pending: PendingLog, condition_vocab, user_vocab, skipped_before: int) -> tuple[dict, int]:
    """(the record to write, the skipped-update count so far); waits for the step to finish."""
    metrics, counters = jax.device_get((pending.metrics, pending.counters))
    record = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    skipped = int(counters["skipped"])
    record.setdefault("grad_norm", 0.0)
    record.update(pending.host, skipped_steps=skipped)
    if skipped > skipped_before:
        log.warning(
            "step %d: %d update(s) skipped since the last log (non-finite loss or gradient, or no "
            "training pairs); %d so far",
            pending.step,
            skipped - skipped_before,
            skipped,
        )
    if "rewards/accuracies_by_condition" in metrics and condition_vocab is not None:
        acc, count = metrics["rewards/accuracies_by_condition"], metrics["count_by_condition"]
        for cid in range(1, len(acc)):
            if count[cid] > 0:
                record[f"rewards/accuracies/{condition_vocab.keys[cid - 1]}"] = float(acc[cid])
    if "per_user/accuracies" in metrics and user_vocab is not None:
        acc, count = metrics["per_user/accuracies"], metrics["per_user/counts"]
        names = ["generic", *user_vocab.keys]
        record.update(
            {f"rewards/accuracies/user/{names[u]}": float(acc[u]) for u in range(len(acc)) if count[u] > 0}
        )
    return record, skipped
