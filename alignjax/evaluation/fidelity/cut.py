"""CUT on judged answers whose single error is known by construction
(`data.builtin: judged_facts`): which tokens CUT flags, and whether it stops making the error.

Flagging: for every judged wrong answer of `cut_eval` (fresh records on the training
topics) the CUT model scores the response with and without its judgment, and flags the tokens
with p(y_t | x, j) / p(y_t | x) > lam (the run's `loss.cut` detection). A token is in
the error span when any of its characters is. Precision: flagged tokens in the span /
flagged tokens; recall: span tokens flagged / span tokens (also per answer: answers
with a flagged span token).

Error rate: each training topic's prompt (`fact_prompts`) is answered greedily and by
sampling at temperature 1; an answer errs unless the number it states is the true one.
Measured for the CUT run and for SFT on the same responses.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import jax
import numpy as np

from alignjax.data.pipeline import make_pipeline
from alignjax.evaluation.fidelity import runs
from alignjax.generation.responses import generate_texts, sampling_config
from alignjax.losses.cut import flag_inappropriate
from alignjax.train.config import LossSection
from alignjax.train.methods.common import forward_logps

NAME = "cut"
HELP = "CUT: flagged tokens against known error spans; error rate of generations after SFT vs CUT"
_STATED = re.compile(r"\bis (\d)\b")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cut_run", help="run directory of configs/fidelity/cut.yaml")
    parser.add_argument("sft_run", help="run directory of the same config with loss.type=sft on builtin:sft")
    parser.add_argument(
        "--num-samples", type=int, default=8, help="sampled answers per prompt (temperature 1)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)


def _read(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def flagged_tokens(run: runs.Run, eval_path: str, batch_size: int = 16) -> list[dict[str, Any]]:
    """Per judged wrong answer of `eval_path` (records with an `id`): its response tokens'
    character ranges and which of them CUT flags."""
    section = run.stage.config.loss.section("cut")
    # condition_field carries each record's id through the pipeline.
    data_cfg = runs.eval_data(run, eval_path, "cut", batch_size, condition_field="id")
    cfg = run.policy.cfg

    @jax.jit
    def flags_ExL(params, batch):
        logps_BxL = forward_logps(params, cfg, LossSection(), batch)
        e = batch.is_satisfactory_E.shape[0]
        return flag_inappropriate(logps_BxL[:e], logps_BxL[e:], section.lam, section.detection)

    tokenizer = run.policy.tokenizer
    pipeline = make_pipeline(data_cfg, tokenizer, process_index=0, process_count=1)
    ids = ["", *pipeline.condition_vocab.keys]
    out = []
    for batch in pipeline:
        flags = np.asarray(flags_ExL(run.policy.params, batch))
        for e in np.flatnonzero(batch.example_valid_E):
            cols = np.flatnonzero((batch.loss_mask_BxL[e] > 0) & (batch.segment_ids_BxL[e] > 0))
            pieces = [tokenizer.decode([int(t)]) for t in batch.tokens_BxL[e, cols]]
            ends = np.cumsum([len(p) for p in pieces])
            out.append(
                {
                    "id": int(ids[batch.condition_id_E[e]]),
                    "pieces": pieces,
                    "starts": (ends - [len(p) for p in pieces]).tolist(),
                    "ends": ends.tolist(),
                    "flagged": flags[e, cols].tolist(),
                }
            )
    pipeline.close()
    return out


def span_scores(records: list[dict[str, Any]], flagged: list[dict[str, Any]]) -> dict[str, Any]:
    """Token precision / recall of the flags against each record's `error_span`."""
    by_id = {r["id"]: r for r in records}
    n_flagged = n_flagged_in_span = n_span = n_answers_hit = 0
    for row in flagged:
        record = by_id[row["id"]]
        text = "".join(row["pieces"])
        if not text.startswith(record["response"]):
            raise ValueError(
                f"record id {row['id']}: the pipeline's response tokens read {text!r}, not {record['response']!r}"
            )
        start, end = record["error_span"]
        in_span = [s < end and e > start for s, e in zip(row["starts"], row["ends"])]
        n_flagged += sum(row["flagged"])
        hits = sum(f and s for f, s in zip(row["flagged"], in_span))
        n_flagged_in_span += hits
        n_span += sum(in_span)
        n_answers_hit += hits > 0
    return {
        "precision": n_flagged_in_span / n_flagged if n_flagged else float("nan"),
        "recall": n_flagged_in_span / n_span,
        "answers_with_span_flagged": n_answers_hit / len(flagged),
        "flagged_tokens": n_flagged,
        "span_tokens": n_span,
        "n": len(flagged),
    }


def error_rates(run: runs.Run, prompts: list[dict[str, Any]], num_samples: int, max_new_tokens: int):
    """{greedy, sampled}: the fraction of answers not stating the prompt's true number; with
    `misconception` in the prompts, {greedy, sampled}_misconception: the fraction stating it;
    and the samples."""
    records = [{"prompt": p["prompt"]} for p in prompts]
    out, samples = {}, []
    for mode, temperature, n in (("greedy", 0.0, 1), ("sampled", 1.0, num_samples)):
        sampling = sampling_config(run.policy, max_new_tokens, temperature)
        texts = generate_texts(run.policy, run.renderer, records, sampling, num_samples=n)
        wrong, misconceived = [], []
        for p, responses in zip(prompts, texts):
            for response in responses:
                stated = _STATED.findall(response)[-1:]
                wrong.append(stated != [p["truth"]])
                misconceived.append("misconception" in p and stated == [p["misconception"]])
                samples.append(
                    {"mode": mode, "prompt": p["prompt"], "truth": p["truth"], "response": response}
                )
        out[mode] = float(np.mean(wrong))
        if all("misconception" in p for p in prompts):
            out[f"{mode}_misconception"] = float(np.mean(misconceived))
    return out, samples


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cut, sft = runs.load_run(args.cut_run), runs.load_run(args.sft_run)
    eval_records = _read(cut.data_file("cut_eval"))
    flags = flagged_tokens(cut, cut.data_file("cut_eval"))
    prompts = _read(cut.data_file("fact_prompts"))
    table: dict[str, Any] = {"flagging": span_scores(eval_records, flags), "error_rate": {}, "samples": []}
    section = cut.stage.config.loss.section("cut")
    table["flagging"].update(lam=section.lam, detection=section.detection)
    for name, run in (("sft", sft), ("cut", cut)):
        rates, samples = error_rates(run, prompts, args.num_samples, args.max_new_tokens)
        table["error_rate"][name] = rates
        table["samples"] += [dict(x, model=name) for x in samples]
    table["num_prompts"] = len(prompts)
    table["num_samples"] = args.num_samples
    table["flag_examples"] = [
        "".join(f"[{p}]" if f else p for p, f in zip(row["pieces"], row["flagged"])) for row in flags[:5]
    ]
    return table


def report(table: dict[str, Any]) -> list[str]:
    f = table["flagging"]
    lines = [
        (
            f"flagged tokens (lam {f['lam']}, {f['detection']}) on {f['n']} judged wrong answers: "
            f"precision {f['precision']:.3f}, recall {f['recall']:.3f} "
            f"({f['flagged_tokens']} flagged, {f['span_tokens']} span tokens; "
            f"span flagged in {f['answers_with_span_flagged']:.3f} of answers)"
        ),
        (
            f"{'error rate':<12}{'greedy':>8}{'sampled':>9}   ({table['num_prompts']} training-topic prompts, "
            f"{table['num_samples']} samples each at temperature 1)"
        ),
    ]
    for name, label in (("sft", "after SFT"), ("cut", "after CUT")):
        r = table["error_rate"][name]
        lines.append(f"{label:<12}{r['greedy']:>8.3f}{r['sampled']:>9.3f}")
    if "greedy_misconception" in table["error_rate"]["sft"]:
        lines.append(
            f"{'misconception':<12}{'greedy':>8}{'sampled':>9}   (answers stating the topic's common wrong number)"
        )
        for name, label in (("sft", "after SFT"), ("cut", "after CUT")):
            r = table["error_rate"][name]
            lines.append(f"{label:<12}{r['greedy_misconception']:>8.3f}{r['sampled_misconception']:>9.3f}")
    lines += [f"  e.g. {x}" for x in table["flag_examples"][:3]]
    return lines


def plot(table: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    f = table["flagging"]
    left.bar(
        ["precision", "recall", "answers hit"], [f["precision"], f["recall"], f["answers_with_span_flagged"]]
    )
    left.set_ylim(0, 1.05)
    left.set_title(f"CUT's flagged tokens vs the known error span (n={f['n']})", fontsize=9)
    x = np.arange(2)
    for offset, name, label in ((-0.2, "sft", "SFT"), (0.2, "cut", "CUT")):
        right.bar(x + offset, [table["error_rate"][name][m] for m in ("greedy", "sampled")], 0.4, label=label)
    right.set_xticks(x, ["greedy", "sampled (T=1)"])
    right.set_ylim(0, 1.05)
    right.set_title("error rate of generated answers", fontsize=9)
    right.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
