"""Evaluation over whole held-out sets, aggregated exactly on the host.

Per-pair implicit-reward margins are gathered from every batch, so accuracies and
per-condition accuracies are exact over the set rather than means of batch means, and
two sets holding the same pairs under opposite conditions give `flip_agreement`.
"""

from __future__ import annotations

import numpy as np

from alignjax.data.pipeline import make_pipeline
from alignjax.train.bootstrap import RunSetup
from alignjax.train.config import Stage
from alignjax.train.datasets import StageData, eval_label
from alignjax.train.multihost import global_batch, to_host
from alignjax.train.state import TrainState


def evaluate(run: RunSetup, stage: Stage, data: StageData, eval_fn, state: TrainState, tables=None):
    """Per-set metrics over whole eval sets (per-pair values aggregated on the host).

    `eval_fn`: the step's `(state, batch) -> (metrics, per_pair)`; `tables`: precomputed
    reference log-probs by set (`loss.reference: precomputed`).
    """
    scfg = stage.config
    out, margins = {}, {}
    for name, dcfg in data.evals.items():
        pipeline = make_pipeline(dcfg, run.tokenizer)
        sums: dict[str, float] = {}
        n_batches = 0
        per_pair: dict[str, list] = {"margin_P": [], "valid_P": [], "condition_P": []}
        for batch in pipeline:
            if scfg.train.eval_batches is not None and n_batches >= scfg.train.eval_batches:
                break
            if tables:
                batch = tables[eval_label(name)].attach(batch)
            metrics, pairs = eval_fn(state, global_batch(batch, run.mesh, run.pad_id))
            for k, v in metrics.items():
                if np.ndim(v) == 0:
                    sums[k] = sums.get(k, 0.0) + float(v)
            for k in per_pair:
                if k in pairs:
                    per_pair[k].append(to_host(pairs[k]))
            n_batches += 1
        pipeline.close()
        prefix = name if name != "eval" else ""
        key = lambda k: f"{prefix}/{k}" if prefix else k
        for k, v in sums.items():
            out[key(k)] = v / max(n_batches, 1)
        if per_pair["margin_P"]:
            margin = np.concatenate(per_pair["margin_P"])
            valid = np.concatenate(per_pair["valid_P"]) > 0
            condition = np.concatenate(per_pair["condition_P"])
            margins[name] = margin[valid]
            # Exact over the set, not a mean of batch means.
            out[key("rewards/accuracies")] = float(np.mean(margin[valid] > 0))
            out[key("rewards/margins")] = float(np.mean(margin[valid]))
            vocab = pipeline.condition_vocab
            if vocab is not None:
                for cid in sorted(set(condition[valid].tolist()) - {0}):
                    sel = valid & (condition == cid)
                    out[key(f"rewards/accuracies/{vocab.keys[cid - 1]}")] = float(np.mean(margin[sel] > 0))
    flip = scfg.train.flip_eval
    if flip and all(n in margins for n in flip) and len(margins[flip[0]]) == len(margins[flip[1]]):
        # The second set holds the same (A, B) under the opposite condition with the labels
        # swapped, so its margin is r(B) - r(A): the preference between A and B reverses with
        # the condition exactly when both margins are positive or both negative.
        a, b = margins[flip[0]], margins[flip[1]]
        out["flip_agreement"] = float(np.mean(np.sign(a) * np.sign(b) > 0))
    return out
