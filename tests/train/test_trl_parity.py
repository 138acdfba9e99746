"""Sigmoid DPO with AdamW against TRL's DPOTrainer: one tiny Llama, the same batches, step by step.

Both trainers start from the same Hugging Face checkpoint (a random float32 Llama from
`hf_models`), read the same plain-text pairs in file order, and are configured alike:
the mapping below is the one the README's "Matching TRL's DPOTrainer" section documents.
The reference is TRL itself, run here with PyTorch, never alignjax code.

Same token ids on both sides by construction: a word-level tokenizer whose post-processor
adds BOS (as Llama's does), responses that start with a space, so TRL's "tokenize
prompt + response as one string" and alignjax's "tokenize prompt and response apart, BOS
once, EOS appended" give identical ids; the test checks TRL's ids against ids written out
by hand, and the per-step log-probs of both sides against each other.
"""

import math

import numpy as np
import pytest

import trl_harness as h  # noqa: E402
from trl_harness import trl  # noqa: E402

# One run, described once and spelled out for each trainer below.
STEPS = 5
BATCH_SIZE = 4
LR = 1e-2  # large, so each step moves the loss well away from ln 2
BETA = 0.1
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0  # step 1's gradient norm is ~4: clipping is active
ADAM_EPS = 1e-8
RUN = h.Run(STEPS, BATCH_SIZE, LR, WEIGHT_DECAY, MAX_GRAD_NORM, ADAM_EPS)

# Float32 on both sides, different kernels and reduction orders (XLA vs. PyTorch CPU):
# differences of ~1e-7 per op, passed on by Adam's normalised updates. Observed over the
# 5 steps: loss 2.0e-6, rewards 4.4e-6, log-probs (sums near -30) 1e-6 relative, gradient
# norm 1.3e-5 relative. The bounds leave ~10x headroom, and stay ~10x below what one wrong
# optimizer detail does to the loss (measured on this run): Adam b2 0.99 instead of 0.999
# 2.1e-4, eps 1e-6 instead of 1e-8 5.7e-4, norm scales decayed too 9.6e-4, weight decay
# off 1.2e-3, no clipping 4.5e-3, constant instead of linear schedule 7e-2.
LOSS_ATOL = 2e-5
REWARD_ATOL = 5e-5
LOGPS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-4


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_parity")
    model_dir = h.word_model(root / "model")
    rows = h.random_pairs(STEPS * BATCH_SIZE)
    data_path = h.write_jsonl(root / "pairs.jsonl", rows)
    args = RUN.trl_args(
        trl.DPOConfig,
        root / "trl",
        loss_type=["sigmoid"],
        beta=BETA,
        precompute_ref_log_probs=False,
    )
    config = RUN.alignjax_config(
        root / "alignjax",
        model_dir,
        data_path,
        {"type": "sigmoid", "beta": BETA},
    )
    return h.run_both(trl.DPOTrainer, args, model_dir, rows, config, ref_model=model_dir)


@pytest.mark.slow
def test_trl_sees_the_hand_tokenised_pairs_in_file_order(both_runs):
    # TRL's batch: the chosen sequences, then the rejected ones, right-padded.
    h.assert_pair_batches(both_runs.trl_input_ids, both_runs.rows, BATCH_SIZE, STEPS)


@pytest.mark.slow
def test_first_step_loss_is_ln2_on_both(both_runs):
    trl_logged, alignjax_logged = both_runs.theirs, both_runs.ours
    assert trl_logged[0]["step"] == alignjax_logged[0]["step"] == 1
    assert trl_logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert alignjax_logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.slow
def test_per_step_loss_matches_trl(both_runs):
    trl_logged, alignjax_logged = both_runs.theirs, both_runs.ours
    assert [r["step"] for r in trl_logged] == list(range(1, STEPS + 1))
    assert [r["step"] for r in alignjax_logged] == list(range(1, STEPS + 1))
    trl_loss, alignjax_loss = h.column(trl_logged, "loss"), h.column(alignjax_logged, "loss")
    # The updates matter: a run that never moved would match trivially.
    assert np.max(np.abs(trl_loss[1:] - math.log(2))) > 0.05
    np.testing.assert_allclose(alignjax_loss, trl_loss, rtol=0, atol=LOSS_ATOL)


@pytest.mark.slow
def test_per_step_rewards_logps_and_schedule_match_trl(both_runs):
    trl_logged, alignjax_logged = both_runs.theirs, both_runs.ours
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        np.testing.assert_allclose(
            h.column(alignjax_logged, key), h.column(trl_logged, key), rtol=0, atol=REWARD_ATOL, err_msg=key
        )
    for key in ("logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(
            h.column(alignjax_logged, key), h.column(trl_logged, key), rtol=LOGPS_RTOL, err_msg=key
        )
    # Gradient norm before clipping: the same gradients, not only the same losses.
    np.testing.assert_allclose(
        h.column(alignjax_logged, "grad_norm"), h.column(trl_logged, "grad_norm"), rtol=GRAD_NORM_RTOL
    )
    # The learning rate each step used: linear decay from LR, the first step at LR.
    expected_lr = LR * (1 - np.arange(STEPS) / STEPS)
    np.testing.assert_allclose(h.column(trl_logged, "learning_rate"), expected_lr, rtol=1e-6)
    np.testing.assert_allclose(h.column(alignjax_logged, "lr"), expected_lr, rtol=1e-6)
