"""Sweep preference conditions over prompts, score every response, summarise steering.

Every grid point (a weight vector, a named condition, or a P-DPO user) is added to
every prompt record, rendered as training rendered it, and sampled; each response is
scored by every objective (a labelled reward) against the *unconditioned* prompt, as
MO-ODPO scores. `summarise` gives, per point, the mean and std of each objective and the
mean length, the non-dominated points, and the steerability of each objective: Spearman's
rho between the weight a point asks of it (its target) and its score, over all samples of
the points that set a target for it, and over those points' means.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from alignjax.evaluation.grid import GridPoint, LabelledReward
from alignjax.evaluation.steerability import pareto_mask, spearman
from alignjax.generation.policy import Policy
from alignjax.generation.prompting import PromptRenderer
from alignjax.generation.responses import generate_texts


def read_prompts(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Prompt records of a JSONL file (`prompt` plus anything else; only `prompt` is kept,
    since each grid point supplies the conditioning)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), (str, list)):
                raise ValueError(f"{path}:{number}: a prompt record needs a 'prompt' (text or messages)")
            records.append({"prompt": row["prompt"]})
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise ValueError(f"{path}: no prompt records")
    return records


def plain_text(prompt: str | list) -> str:
    """The query a reward sees: the text, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None  # JSON has no NaN


def sweep(
    policy: Policy,
    renderer: PromptRenderer,
    prompts: list[dict[str, Any]],
    points: list[GridPoint],
    objectives: list[LabelledReward],
    sampling,
    *,
    seed: int = 0,
    num_samples: int = 1,
    batch_size: int = 64,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """(samples, scores): one sample dict per response (point-major, then prompt, then
    sample) and each objective's scores in that order."""
    records = [{**p, **point.fields} for point in points for p in prompts]
    texts = generate_texts(
        policy,
        renderer,
        records,
        sampling,
        seed=seed,
        num_samples=num_samples,
        batch_size=batch_size,
        where="grid point x prompt",
    )
    samples = []
    for r, (record, responses) in enumerate(zip(records, texts)):
        point = points[r // len(prompts)]
        for s, response in enumerate(responses):
            samples.append(
                {
                    "point": point.name,
                    "prompt_index": r % len(prompts),
                    "sample": s,
                    "prompt": plain_text(record["prompt"]),
                    "response": response,
                }
            )
    queries = [x["prompt"] for x in samples]
    responses = [x["response"] for x in samples]
    scores = {o.label: np.asarray(o.reward(queries, responses), np.float64) for o in objectives}
    for i, x in enumerate(samples):
        x["scores"] = {label: float(v[i]) for label, v in scores.items()}
    return samples, scores


def summarise(points: list[GridPoint], objectives: list[LabelledReward], samples, scores) -> dict[str, Any]:
    """Per-point statistics, the non-dominated points, and steerability per objective."""
    labels = [o.label for o in objectives]
    point_N = np.asarray([x["point"] for x in samples])
    chars_N = np.asarray([len(x["response"]) for x in samples], np.float64)
    words_N = np.asarray([len(x["response"].split()) for x in samples], np.float64)
    rows = []
    for point in points:
        sel = point_N == point.name
        rows.append(
            {
                "name": point.name,
                "fields": point.fields,
                "targets": point.targets,
                "n": int(sel.sum()),
                "scores": {
                    k: {"mean": float(np.mean(scores[k][sel])), "std": float(np.std(scores[k][sel]))}
                    for k in labels
                },
                "response_chars": float(np.mean(chars_N[sel])),
                "response_words": float(np.mean(words_N[sel])),
            }
        )
    means_NxK = np.asarray([[row["scores"][k]["mean"] for k in labels] for row in rows])
    front = [row["name"] for row, keep in zip(rows, pareto_mask(means_NxK)) if keep]
    steer = {}
    for k in labels:
        asked = [p for p in points if k in p.targets]
        if len(asked) < 2:
            continue
        sel = np.isin(point_N, [p.name for p in asked])
        target_of = {p.name: p.targets[k] for p in asked}
        sample_targets = [target_of[name] for name in point_N[sel]]
        point_means = [row["scores"][k]["mean"] for row in rows if row["name"] in target_of]
        steer[k] = {
            "samples": _finite(spearman(sample_targets, scores[k][sel])),
            "n_samples": int(sel.sum()),
            "grid_means": _finite(spearman([p.targets[k] for p in asked], point_means)),
            "n_points": len(asked),
        }
    return {"objectives": labels, "points": rows, "pareto": front, "steerability": steer}
