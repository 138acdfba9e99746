"""Reward-model training against TRL's RewardTrainer: one tiny LlamaForSequenceClassification, step by step.

Both trainers start from the same Hugging Face sequence-classification checkpoint (random
float32, built locally), read the same plain-text pairs in file order and are configured
alike (RewardConfig's names -> alignjax's keys as the README's TRL table maps them). The
reference is TRL itself, run with PyTorch.

The word-level tokenizer of the DPO parity test gives both sides the same ids: TRL
appends EOS to each response's text and tokenizes prompt + response as one string,
alignjax tokenizes them apart with BOS once and EOS appended. In the over-long run,
max_length falls below some pairs' sequences: TRL filters those pairs out, and alignjax
(data.over_length: auto, which is drop for a reward model) drops them and its data check
counts them.
"""

import glob
import json
from typing import NamedTuple

import numpy as np
import pytest

import trl_harness as h  # noqa: E402
from trl_harness import torch, transformers, trl  # noqa: E402

STEPS = 5
BATCH_SIZE = 4
LR = 3e-3
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
ADAM_EPS = 1e-8
RUN = h.Run(STEPS, BATCH_SIZE, LR, WEIGHT_DECAY, MAX_GRAD_NORM, ADAM_EPS)
CENTER = 0.01
RTOL = 1e-4  # the bound on every logged quantity
# Sequences of `random_pairs` hold 4 to 18 tokens (BOS, 2-8 prompt words, 1-8 response
# words, EOS): at 12, half of the pairs (the first among them) have a sequence over it.
SHORT_MAX_LENGTH = 12
OVER_LONG_ROWS = 48  # 24 survive the filter: STEPS * BATCH_SIZE and more


class Runs(NamedTuple):
    compared: h.Compared
    run_dir: str  # alignjax's
    max_length: int


def _fitting(rows, max_length: int) -> list[dict]:
    """The pairs whose hand-tokenised chosen and rejected sequences (BOS, prompt, response,
    EOS) both fit max_length."""
    return [
        r
        for r in rows
        if all(
            1 + len(h.word_ids(r["prompt"] + r[side])) + 1 <= max_length for side in ("chosen", "rejected")
        )
    ]


@pytest.fixture(scope="module", params=["no-margin", "margin", "over-long"])
def both_runs(request, tmp_path_factory):
    margins, over_long = request.param == "margin", request.param == "over-long"
    max_length = SHORT_MAX_LENGTH if over_long else h.MAX_LENGTH
    root = tmp_path_factory.mktemp("trl_reward")
    model_dir = h.word_model(root / "model", head="sequence_classification", num_labels=1)
    rows = h.random_pairs(OVER_LONG_ROWS if over_long else STEPS * BATCH_SIZE, seed=3)
    if margins:  # TRL's optional per-pair h.column, some negative, some above typical margins
        draws = np.random.default_rng(4).uniform(-1.0, 2.0, len(rows))
        rows = [{**r, "margin": round(float(m), 3)} for r, m in zip(rows, draws)]
    data_path = h.write_jsonl(root / "pairs.jsonl", rows)
    args = RUN.trl_args(
        trl.RewardConfig,
        root / "trl",
        center_rewards_coefficient=CENTER,
        max_length=max_length,
    )
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    config = RUN.alignjax_config(
        root / "alignjax",
        model_dir,
        data_path,
        # TRL reads a `margin` column whenever the data has one; alignjax when told to.
        {
            "type": "reward",
            "reward": {"center_rewards_coefficient": CENTER, "margin_field": "margin" if margins else None},
        },
        # RewardConfig has no prompt limit: none here either when max_length drops pairs.
        data={"max_length": max_length, "max_prompt_length": None} if over_long else None,
    )
    compared = h.run_both(trl.RewardTrainer, args, model, rows, config, model_dir=model_dir)
    return Runs(compared, config["run_dir"], max_length)


@pytest.mark.slow
def test_per_step_loss_metrics_and_gradient_norm_match_trl(both_runs):
    trl_logged, alignjax_logged = both_runs.compared.theirs, both_runs.compared.ours
    h.assert_same_steps(alignjax_logged, trl_logged, STEPS, min_loss_range=0.1)
    for key in ("loss", "margin", "mean_reward", "min_reward", "max_reward", "grad_norm"):
        np.testing.assert_allclose(
            h.column(alignjax_logged, key), h.column(trl_logged, key), rtol=RTOL, err_msg=key
        )
    np.testing.assert_array_equal(h.column(alignjax_logged, "accuracy"), h.column(trl_logged, "accuracy"))
    np.testing.assert_allclose(
        h.column(alignjax_logged, "lr"), h.column(trl_logged, "learning_rate"), rtol=1e-6
    )


@pytest.mark.slow
def test_trl_scores_the_hand_tokenised_sequences(both_runs):
    # TRL's batch: the chosen sequences, then the rejected ones, right-padded, of the pairs
    # that fit max_length (TRL filters the others out).
    rows = _fitting(both_runs.compared.rows, both_runs.max_length)
    h.assert_pair_batches(both_runs.compared.trl_input_ids, rows, BATCH_SIZE, STEPS)


@pytest.mark.slow
def test_the_data_check_counts_the_over_long_pairs_training_drops(both_runs):
    rows = both_runs.compared.rows
    dropped = len(rows) - len(_fitting(rows, both_runs.max_length))
    assert (dropped > 0) == (both_runs.max_length == SHORT_MAX_LENGTH)
    [path] = glob.glob(f"{both_runs.run_dir}/data_check/train-train-*.json")
    with open(path) as f:
        summary = json.load(f)
    assert summary["reasons"] == ({"over_length": dropped} if dropped else {})
    assert [s["dropped"] for s in summary["sources"]] == [dropped]
    assert summary["truncated"] == 0
