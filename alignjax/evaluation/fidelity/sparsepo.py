"""SparsePO on sentiment control (`data.builtin: sentiment_words`): the reward-KL frontier
of DPO, TDPO and SparsePO (MaPO activation masks, learned masks) over a beta sweep, and
where SparsePO's masks put their weight.

Every run directory is one (method, beta); the method and beta are read from its config.
Reward: the mean lexicon sentiment score of temperature-1 samples for the held-out
prompts; KL: the mean sequence KL of the same samples from the run's reference
(`generation_kl`). Both for the SFT reference too (KL 0). Accuracy: held-out pairs whose
implicit-reward margin is positive, with each method's own reward (SparsePO's weighs
each token by its reward mask) and the plain sequence margin. Masks: over the response
tokens of every held-out pair (both answers), the fraction of exact zeros and the mean
weight on sentiment-bearing tokens (characters of a lexicon word) and on the others.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.data.pipeline import make_pipeline
from alignjax.evaluation.fidelity import generation_kl, runs
from alignjax.losses.activation_masks import activation_mask
from alignjax.models import decoder
from alignjax.models.mask_head import MASK_HEAD_KEY, MaskHead
from alignjax.tasks.sentiment_words import lexicon_spans, score
from alignjax.train.config import LossSection
from alignjax.train.methods.common import logps_from_hidden

NAME = "sparsepo"
HELP = "SparsePO vs DPO / TDPO: reward-KL frontier over beta, mask sparsity and focus (sentiment_words)"
LABELS = {
    "dpo": "DPO",
    "tdpo": "TDPO",
    "mapo": "SparsePO (MaPO masks)",
    "learned": "SparsePO (learned masks)",
    "mapo_nokl": "SparsePO (MaPO masks, no KL term)",
    "learned_nokl": "SparsePO (learned masks, no KL term)",
}
NO_KL = "_nokl"  # a SparsePO run with `loss.sparsepo.kl: false`: masked rewards, no token KL


def mask_kind(method: str) -> str:
    """The masks a method's reward uses, whether or not it has the KL term."""
    return method.removesuffix(NO_KL)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs", nargs="+", help="runs of configs/fidelity/sparsepo.yaml: each method at each beta"
    )
    parser.add_argument(
        "--num-samples", type=int, default=32, help="samples per held-out prompt (temperature 1)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)


def method_of(loss) -> str:
    """dpo, tdpo, mapo or learned (with _nokl without the KL term), from a run's `loss` section."""
    if loss.names == ("sigmoid",):
        return "dpo"
    if loss.names == ("tdpo",):
        return "tdpo"
    if loss.names != ("sparsepo",):
        raise ValueError(
            f"loss.type={list(loss.names)}: this comparison takes sigmoid, tdpo or sparsepo runs"
        )
    section = loss.section("sparsepo")
    method = {"ones": "tdpo", "activations": "mapo", "learned": "learned"}.get(section.weights)
    if method is None:
        _unsupported(section.weights)
    if not section.kl:
        if method == "tdpo":  # all-ones reward weights without the KL term are DPO itself
            raise ValueError("loss.sparsepo.weights=ones with kl: false is DPO: compare loss.type=sigmoid")
        method += NO_KL
    return method


def _unsupported(weights: str):
    raise ValueError(f"loss.sparsepo.weights={weights}: compare ones, activations or learned masks")


def sentiment_flags(pieces: list[str]) -> np.ndarray:
    """Per token (its decoded text in `pieces`): does any of its characters lie in a lexicon word?"""
    ends = np.cumsum([len(p) for p in pieces])
    starts = ends - [len(p) for p in pieces]
    flags = np.zeros(len(pieces), bool)
    for s, e, _ in lexicon_spans("".join(pieces)):
        flags |= (starts < e) & (ends > s)
    return flags


def mask_statistics(weights_T: np.ndarray, sentiment_T: np.ndarray) -> dict[str, float]:
    """Exact-zero fraction and mean weight over response tokens, on sentiment-bearing tokens and on the others."""
    on, off = float(np.mean(weights_T[sentiment_T])), float(np.mean(weights_T[~sentiment_T]))
    return {
        "sparsity": float(np.mean(weights_T == 0)),
        "mean": float(np.mean(weights_T)),
        "mean_sentiment": on,
        "mean_other": off,
        "sentiment_over_other": on / off if off > 0 else float("inf"),
        "tokens": int(weights_T.size),
        "sentiment_tokens": int(sentiment_T.sum()),
    }


def dominated(point: tuple[float, float], others: list[tuple[float, float]]) -> bool:
    """Is (kl, reward) Pareto-dominated by one of `others` (KL no higher, reward no lower, one strictly)?"""
    kl, reward = point
    return any(k <= kl and r >= reward and (k < kl or r > reward) for k, r in others)


@functools.lru_cache(maxsize=8)
def _pair_fn(cfg, method: str, mask_mode: str):
    head = MaskHead(mode=mask_mode)

    def logps(params, hidden_BxLxD, tokens_BxL):
        return logps_from_hidden(params, cfg, LossSection(), hidden_BxLxD, tokens_BxL)

    @jax.jit
    def fn(params, ref_params, head_params, batch):
        """(per-token log-ratio d_BxL, reward weights m_BxL) on response tokens."""
        tokens, positions, segments = batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL
        response_BxL = (batch.loss_mask_BxL * (segments > 0)).astype(jnp.float32)
        policy_BxL = logps(params, decoder.apply(params, cfg, tokens, positions, segments), tokens)
        ref_hidden, ref_layers, ref_acts = decoder.apply_with_intermediates(
            ref_params, cfg, tokens, positions, segments
        )
        d_BxL = (policy_BxL - logps(ref_params, ref_hidden, tokens)) * response_BxL
        if method == "learned":
            m_BxL, _ = head.apply({"params": head_params}, ref_layers, deterministic=True)
        elif method == "mapo":
            m_BxL = activation_mask({k: v[..., None] for k, v in ref_acts.items()}, response_BxL)
        else:
            m_BxL = jnp.ones_like(d_BxL)
        return d_BxL, m_BxL * response_BxL

    return fn


def pair_scores(run: runs.Run, method: str, eval_path: str, batch_size: int = 16) -> dict[str, Any]:
    """Held-out accuracy (own and plain margins) and, for masked methods, mask statistics."""
    data_cfg = runs.eval_data(run, eval_path, "preference", batch_size)
    loss = run.stage.config.loss
    mask_mode = loss.section("sparsepo").mask_mode if loss.names == ("sparsepo",) else "common"
    method = mask_kind(method)
    fn = _pair_fn(run.policy.cfg, method, mask_mode)
    ref = runs.reference_params(run)
    head_params = run.policy.extras.get(MASK_HEAD_KEY) if method == "learned" else None
    tokenizer = run.policy.tokenizer
    pipeline = make_pipeline(data_cfg, tokenizer, process_index=0, process_count=1)
    own, plain, weights, flags = [], [], [], []
    for batch in pipeline:
        d_BxL, m_BxL = (np.asarray(x) for x in fn(run.policy.params, ref, head_params, batch))
        p = batch.pair_valid_P.shape[0]
        for i in np.flatnonzero(batch.pair_valid_P):
            own.append(np.sum(m_BxL[i] * d_BxL[i]) - np.sum(m_BxL[p + i] * d_BxL[p + i]))
            plain.append(np.sum(d_BxL[i]) - np.sum(d_BxL[p + i]))
            for row in (i, p + i):
                cols = np.flatnonzero((batch.loss_mask_BxL[row] > 0) & (batch.segment_ids_BxL[row] > 0))
                weights.append(m_BxL[row, cols])
                flags.append(
                    sentiment_flags([tokenizer.decode([int(t)]) for t in batch.tokens_BxL[row, cols]])
                )
    pipeline.close()
    out = {
        "accuracy": float(np.mean(np.asarray(own) > 0)),
        "accuracy_plain": float(np.mean(np.asarray(plain) > 0)),
        "pairs": len(own),
    }
    if method in ("mapo", "learned"):
        out["mask"] = mask_statistics(np.concatenate(weights), np.concatenate(flags))
    return out


def _generation_point(run, params, ref, prompts, args) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reward and KL of `params`' samples; `params` None: the reference's own samples (KL 0)."""
    gens = generation_kl.sample(
        run, ref if params is None else params, prompts, args.num_samples, args.max_new_tokens
    )
    reward_N = np.asarray([score(t) for t in gens.texts])
    kl_N = np.zeros(len(reward_N)) if params is None else generation_kl.sequence_kl(run, params, ref, gens)
    n = len(reward_N)
    point = {
        "reward": float(reward_N.mean()),
        "reward_se": float(reward_N.std() / np.sqrt(n)),
        "kl": float(kl_N.mean()),
        "kl_se": float(kl_N.std() / np.sqrt(n)),
        "samples": n,
    }
    samples = [
        {"prompt": prompts[i]["prompt"], "response": t, "reward": float(r), "kl": float(k)}
        for i, t, r, k in zip(gens.prompt_index, gens.texts, reward_N, kl_N)
    ]
    return point, samples


def measure(args: argparse.Namespace) -> dict[str, Any]:
    loaded = [runs.load_run(d) for d in args.run_dirs]
    with open(loaded[0].data_file("eval_prompts"), encoding="utf-8") as f:
        prompts = [json.loads(line) for line in f if line.strip()]
    points, all_samples = [], []
    for run in loaded:
        method, beta = method_of(run.stage.config.loss), run.stage.config.loss.beta
        ref = runs.reference_params(run)
        point, samples = _generation_point(run, run.policy.params, ref, prompts, args)
        point.update(method=method, beta=beta, run=run.run_dir)
        point.update(pair_scores(run, method, run.data_file("eval")))
        points.append(point)
        all_samples += [dict(s, method=method, beta=beta) for s in samples]
    first = loaded[0]
    reference, samples = _generation_point(first, None, runs.reference_params(first), prompts, args)
    all_samples += [dict(s, method="reference") for s in samples]
    dpo = [(p["kl"], p["reward"]) for p in points if p["method"] == "dpo"]
    for p in points:
        if p["method"] != "dpo" and dpo:
            p["dominated_by_dpo"] = dominated((p["kl"], p["reward"]), dpo)
    return {
        "points": points,
        "reference": reference,
        "num_prompts": len(prompts),
        "num_samples": args.num_samples,
        "samples": all_samples,
    }


def report(table: dict[str, Any]) -> list[str]:
    ref = table["reference"]
    lines = [
        f"{table['num_prompts']} held-out prompts x {table['num_samples']} samples (temperature 1); "
        f"SFT reference: reward {ref['reward']:.3f}",
        f"{'method':<26}{'beta':>6}{'reward':>8}{'KL':>8}{'acc':>7}{'acc(seq)':>9}"
        f"{'zeros':>7}{'w sent':>8}{'w other':>8}{'ratio':>7}  dominated by DPO",
    ]
    for p in sorted(table["points"], key=lambda p: (list(LABELS).index(p["method"]), p["beta"])):
        m = p.get("mask")
        masks = (
            f"{m['sparsity']:>7.3f}{m['mean_sentiment']:>8.3f}{m['mean_other']:>8.3f}{m['sentiment_over_other']:>7.2f}"
            if m
            else f"{'':>30}"
        )
        dom = {True: "yes", False: "no"}.get(p.get("dominated_by_dpo"), "")
        lines.append(
            f"{LABELS[p['method']]:<26}{p['beta']:>6g}{p['reward']:>8.3f}{p['kl']:>8.2f}{p['accuracy']:>7.3f}"
            f"{p['accuracy_plain']:>9.3f}{masks}  {dom}"
        )
    return lines


def plot(table: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    ref = table["reference"]
    left.scatter([0], [ref["reward"]], color="k", marker="*", s=80, label="SFT reference", zorder=3)
    for i, method in enumerate(LABELS):
        pts = sorted((p for p in table["points"] if p["method"] == method), key=lambda p: p["kl"])
        if not pts:
            continue
        left.plot(
            [p["kl"] for p in pts], [p["reward"] for p in pts], "o-", color=f"C{i}", label=LABELS[method]
        )
        for p in pts:
            left.annotate(
                f"{p['beta']:g}",
                (p["kl"], p["reward"]),
                fontsize=7,
                xytext=(3, -9),
                textcoords="offset points",
            )
    left.set_xlabel("sequence KL from the reference (nats)")
    left.set_ylabel("lexicon sentiment reward")
    left.set_title("reward-KL frontier (labels: beta)", fontsize=9)
    left.legend(fontsize=7)
    masked = sorted((p for p in table["points"] if "mask" in p), key=lambda p: (p["method"], p["beta"]))
    x = np.arange(len(masked))
    right.bar(x - 0.27, [p["mask"]["sparsity"] for p in masked], 0.27, label="exact zeros")
    right.bar(x, [p["mask"]["mean_sentiment"] for p in masked], 0.27, label="mean weight, sentiment tokens")
    right.bar(x + 0.27, [p["mask"]["mean_other"] for p in masked], 0.27, label="mean weight, other tokens")
    names = {
        "mapo": "MaPO",
        "learned": "learned",
        "mapo_nokl": "MaPO, no KL",
        "learned_nokl": "learned, no KL",
    }
    right.set_xticks(x, [f"{names[p['method']]}\nbeta {p['beta']:g}" for p in masked], fontsize=7)
    right.set_title("SparsePO reward masks on held-out pairs", fontsize=9)
    right.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
