"""KTO against TRL's KTOTrainer, step by step, for both loss types (kto, apo_zero_unpaired)
and for kto with TR-DPO's moving reference (`sync_ref_model`, which KTOConfig has too).

One tiny Llama and one word-level tokenizer (`test_trl_parity`'s: the same token ids on
both sides by construction), the same unpaired records in file order, AdamW with the same
settings. The reference is TRL itself, run here with PyTorch on one thread. Each batch
holds desirable and undesirable examples, so every metric TRL logs is logged every step;
the two weights differ, so a swapped weight would show. Relative differences: of each
metric to TRL's, except `rewards/margins`, a difference of two means that may cross 0,
taken relative to the sum of the two means' magnitudes.
"""

import random

import numpy as np
import pytest

import trl_harness as h  # noqa: E402
from trl_harness import trl  # noqa: E402

STEPS, BATCH, LR, BETA = 5, 4, 1e-2, 0.1
RUN = h.Run(STEPS, BATCH, LR)
DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT = 1.0, 0.5
REL_TOL = 1e-4
# Where TRL's value is exactly 0 (the first step's rewards, the reference point when the
# mismatched pairs' mean log-ratio is negative), ours must be 0 within float32 rounding.
ZERO_ATOL = 1e-6
METRICS = (
    "loss",
    "kl",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "grad_norm",
)


def _records(n, seed=0):
    """Plain-text unpaired records; every batch of BATCH holds three desirable and one
    undesirable. Desirable completions use a few words whatever the prompt, so raising them
    raises them after other prompts too: the mismatched pairs' log-ratio turns positive
    (z0 > 0 from step 2), which it does not with random words for every completion."""
    rng = random.Random(seed)

    def words(lo, hi, vocabulary=h.WORDS):
        return " ".join(rng.choices(vocabulary, k=rng.randint(lo, hi)))

    labels = []
    for _ in range(n // BATCH):
        batch = [True] * (BATCH - 1) + [False]
        rng.shuffle(batch)
        labels += batch
    return [
        dict(prompt=words(2, 8), completion=" " + words(1, 8, h.WORDS[:6] if label else h.WORDS), label=label)
        for label in labels
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_kto")
    model_dir = h.word_model(root / "model")
    rows = _records(STEPS * BATCH, seed=5)
    return model_dir, rows, h.write_jsonl(root / "unpaired.jsonl", rows)


# The reference moves after steps 2 and 4 (TRL's kl at step 3: 0.92 against 4.07 unmoved).
SYNC = {"sync_ref_model": True, "ref_model_mixup_alpha": 0.3, "ref_model_sync_steps": 2}
CASES = {
    "kto": ("kto", {}),
    "apo_zero_unpaired": ("apo_zero_unpaired", {}),
    "kto_sync_ref_model": ("kto", SYNC),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_per_step_metrics_match_trl(setup, tmp_path, case):
    model_dir, rows, data_path = setup
    loss_type, options = CASES[case]
    args = RUN.trl_args(
        trl.KTOConfig,
        tmp_path / "trl",
        loss_type=loss_type,
        beta=BETA,
        desirable_weight=DESIRABLE_WEIGHT,
        undesirable_weight=UNDESIRABLE_WEIGHT,
        gradient_checkpointing=False,
        **options,
    )
    theirs, seen = h.trl_run(
        trl.KTOTrainer, args, model_dir, rows, ref_model=model_dir, record=("input_ids", "KL_input_ids")
    )
    kto = {
        "loss_type": loss_type,
        "desirable_weight": DESIRABLE_WEIGHT,
        "undesirable_weight": UNDESIRABLE_WEIGHT,
    }
    config = RUN.alignjax_config(
        tmp_path / "alignjax",
        model_dir,
        data_path,
        {"type": "kto", "beta": BETA, **options, "kto": kto},
        data={"record_type": "unpaired"},
    )
    ours = h.alignjax_run(config)

    # TRL's batches are the records in file order, and (kto) its KL rows pair prompt i
    # with completion i - 1 of the same batch, as alignjax's UnpairedBatch does.
    assert len(seen) == STEPS
    for step, inputs in enumerate(seen):
        batch = rows[step * BATCH : (step + 1) * BATCH]
        prompt_ids = [[h.BOS_ID] + h.word_ids(r["prompt"]) for r in batch]
        completion_ids = [h.word_ids(r["completion"]) + [h.EOS_ID] for r in batch]
        assert h.unpadded(inputs["input_ids"]) == [p + c for p, c in zip(prompt_ids, completion_ids)]
        if loss_type == "kto":
            kl_expected = [p + completion_ids[i - 1] for i, p in enumerate(prompt_ids)]
            assert h.unpadded(inputs["KL_input_ids"]) == kl_expected
        else:
            assert "KL_input_ids" not in inputs

    h.assert_same_steps(ours, theirs, STEPS, min_loss_range=1e-2)
    if loss_type == "kto":
        assert np.max(h.column(theirs, "kl")) > 1.0  # the reference point is in play
    report = {}
    for key in METRICS:
        a, b = h.column(ours, key), h.column(theirs, key)
        zero = b == 0
        assert np.all(np.abs(a[zero]) <= ZERO_ATOL), f"{loss_type} {key}: {a[zero]} where TRL's is 0"
        scale = np.abs(b)
        if key == "rewards/margins":
            # A difference of two means that may cross 0: relative to the means it subtracts.
            scale = np.abs(h.column(theirs, "rewards/chosen")) + np.abs(h.column(theirs, "rewards/rejected"))
        report[key] = float(np.max(np.abs(a - b)[~zero] / scale[~zero], initial=0.0))
    print(f"{case}: max relative difference over {STEPS} steps {report}")
    for key, rel in report.items():
        assert rel <= REL_TOL, f"{case} {key}: {rel:.2e}"
