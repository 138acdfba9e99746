"""P-DPO per-user reward accuracy on a preference file, as the trainer measures it.

The implicit reward margin of a pair for its user u is
`beta * ((log pi(y_w | e_u, x) - log ref(y_w | x)) - (log pi(y_l | e_u, x) - log ref(y_l | x)))`:
the policy sees the user's soft tokens in the slots after BOS, the reference (the
stage's frozen starting point, `<run_dir>/reference/<stage>`) sees the prompt
without slots. A pair counts as correct when the margin is positive.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.core import paths
from alignjax.data import ops as data_ops
from alignjax.data.config import DataConfig, SourceConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.data.vocab import Vocab
from alignjax.generation.policy import USER_MODEL_KEY, Policy
from alignjax.generation.soft_prompt import soft_tokens_BxTxD
from alignjax.models import decoder
from alignjax.models.lora import Adapted
from alignjax.train.config import LossSection
from alignjax.train.methods.common import logps_from_hidden


def load_reference(run_dir: str, stage: str, policy: Policy | None = None):
    """The stage's frozen reference parameters, as the trainer saved them. A LoRA run saves
    only adapters (or marks that the reference is its base with adapters off): its
    reference is then rebuilt on `policy`'s base, the one the run trained on."""
    from alignjax.convert import model_checkpoint as mc

    root = paths.join(run_dir, "reference", stage)
    base = policy.params.base if policy is not None and isinstance(policy.params, Adapted) else None
    if base is not None and paths.exists(root + ".adapters_off.json"):
        return base
    if not paths.isdir(root):
        raise FileNotFoundError(
            f"{root}: no reference for stage {stage!r}; P-DPO accuracy needs the run directory of a "
            "training run that reached that stage"
        )
    saved = mc.load_params(*mc.resolve(root))
    return Adapted(base, saved) if base is not None else saved


def _sequence_logps(params, cfg, tokens_BxL, positions_BxL, segment_ids_BxL, extra=None):
    hidden_BxLxD = decoder.apply(params, cfg, tokens_BxL, positions_BxL, segment_ids_BxL, extra)
    return logps_from_hidden(params, cfg, LossSection(), hidden_BxLxD, tokens_BxL)


def _margins_fn(cfg, beta: float, n_tokens: int):
    @jax.jit
    def margins(params, user_params, ref_params, batch):
        index_BxT = jnp.argsort(1 - batch.user_slot_mask_BxL, axis=1, stable=True)[:, :n_tokens]
        users_B = jnp.concatenate([batch.user_index_P, batch.user_index_P])
        extra = decoder.ExtraEmbeddings(soft_tokens_BxTxD(user_params, users_B), index_BxT)
        logps_BxL = _sequence_logps(
            params, cfg, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL, extra
        )
        chosen_P, rejected_P = data_ops.pair_sums(logps_BxL, batch)
        ref_batch = data_ops.remove_user_slots(batch)
        ref_BxL = _sequence_logps(
            ref_params, cfg, ref_batch.tokens_BxL, ref_batch.positions_BxL, ref_batch.segment_ids_BxL
        )
        ref_chosen_P, ref_rejected_P = data_ops.pair_sums(ref_BxL, ref_batch)
        return beta * ((chosen_P - ref_chosen_P) - (rejected_P - ref_rejected_P))

    return margins


def user_accuracies(
    policy: Policy,
    data_cfg: DataConfig,
    user_vocab: Vocab,
    ref_params: Any,
    eval_path: str,
    beta: float,
    vocab_path: str,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """user id -> {accuracy, margin (mean), n} over the pairs of `eval_path`, plus "all".

    `vocab_path` is where the run's user vocabulary is written for the pipeline, which
    would otherwise number the users of the eval file on its own.
    """
    if USER_MODEL_KEY not in policy.extras:
        raise ValueError(
            f"{policy.source}: the checkpoint has no user_model; per-user accuracy is for P-DPO runs"
        )
    if data_cfg.n_user_tokens == 0:
        raise ValueError(
            "the run config's stage reserves no user slots (no loss.pdpo.n_user_tokens); pass --stage "
            "naming the P-DPO stage"
        )
    user_vocab.save(vocab_path)
    cfg = dataclasses.replace(
        data_cfg,
        sources=[SourceConfig(path=eval_path)],
        record_type="preference",
        batch_size=batch_size,
        shuffle=False,
        num_epochs=1,
        packing=False,
        worker_count=0,
        user_vocab_path=vocab_path,
    )
    margins = _margins_fn(policy.cfg, beta, data_cfg.n_user_tokens)
    pipeline = make_pipeline(cfg, policy.tokenizer, process_index=0, process_count=1)
    margin_P, user_P = [], []
    for batch in pipeline:
        valid = batch.pair_valid_P > 0
        out = np.asarray(margins(policy.params, policy.extras[USER_MODEL_KEY], ref_params, batch))
        margin_P.append(out[valid])
        user_P.append(batch.user_index_P[valid])
    pipeline.close()
    margin_P, user_P = np.concatenate(margin_P), np.concatenate(user_P)
    names = np.asarray(["generic", *user_vocab.keys])
    return accuracy_table(margin_P, names[user_P])


def accuracy_table(margin_N: np.ndarray, group_N: np.ndarray) -> dict[str, dict[str, float]]:
    """group -> {accuracy (margin > 0), margin, n}, plus "all"."""
    table = {}
    for g in sorted(set(group_N.tolist())):
        sel = group_N == g
        table[g] = {
            "accuracy": float(np.mean(margin_N[sel] > 0)),
            "margin": float(np.mean(margin_N[sel])),
            "n": int(sel.sum()),
        }
    table["all"] = {
        "accuracy": float(np.mean(margin_N > 0)),
        "margin": float(np.mean(margin_N)),
        "n": len(margin_N),
    }
    return table
