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

import json
import os
import random

import numpy as np
import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from hf_models import build_hf_model  # noqa: E402
from test_trl_parity import (  # noqa: E402
    BOS_ID,
    EOS_ID,
    MAX_LENGTH,
    MAX_PROMPT_LENGTH,
    PAD_ID,
    WORDS,
    _save_word_tokenizer,
    _word_ids,
)

STEPS, BATCH, LR, BETA = 5, 4, 1e-2, 0.1
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

    def words(lo, hi, vocabulary=WORDS):
        return " ".join(rng.choices(vocabulary, k=rng.randint(lo, hi)))

    labels = []
    for _ in range(n // BATCH):
        batch = [True] * (BATCH - 1) + [False]
        rng.shuffle(batch)
        labels += batch
    return [
        dict(prompt=words(2, 8), completion=" " + words(1, 8, WORDS[:6] if label else WORDS), label=label)
        for label in labels
    ]


# The reference moves after steps 2 and 4 (TRL's kl at step 3: 0.92 against 4.07 unmoved).
SYNC = {"sync_ref_model": True, "ref_model_mixup_alpha": 0.3, "ref_model_sync_steps": 2}
CASES = {
    "kto": ("kto", {}),
    "apo_zero_unpaired": ("apo_zero_unpaired", {}),
    "kto_sync_ref_model": ("kto", SYNC),
}


def _run_trl(model_dir, rows, loss_type, options, out_dir):
    torch.set_num_threads(1)
    args = trl.KTOConfig(
        output_dir=out_dir,
        loss_type=loss_type,
        beta=BETA,
        desirable_weight=DESIRABLE_WEIGHT,
        undesirable_weight=UNDESIRABLE_WEIGHT,
        learning_rate=LR,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        max_length=MAX_LENGTH,
        train_sampling_strategy="sequential",
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=0,
        **options,
    )
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # noqa: E731
    seen = []

    class RecordingKTOTrainer(trl.KTOTrainer):
        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                seen.append({k: inputs[k].tolist() for k in ("input_ids", "KL_input_ids") if k in inputs})
            return super().compute_loss(model, inputs, *rest, **kwargs)

    trainer = RecordingKTOTrainer(
        model=load(),
        ref_model=load(),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h], seen


def _run_alignjax(model_dir, data_path, loss_type, options, run_dir):
    import yaml

    from alignjax import cli

    config = {
        "run_dir": run_dir,
        "model": {"hf_path": model_dir},
        "data": {
            "train": data_path,
            "record_type": "unpaired",
            "shuffle": False,
            "max_length": MAX_LENGTH,
            "max_prompt_length": MAX_PROMPT_LENGTH,
        },
        "loss": {
            "type": "kto",
            "beta": BETA,
            **options,
            "kto": {
                "loss_type": loss_type,
                "desirable_weight": DESIRABLE_WEIGHT,
                "undesirable_weight": UNDESIRABLE_WEIGHT,
            },
        },
        "optim": {"name": "adamw", "lr": LR, "schedule": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0},
        "train": {"steps": STEPS, "batch_size": BATCH, "log_every": 1},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    with open(run_dir + ".yaml", "w") as f:
        yaml.safe_dump(config, f)
    assert cli.main(["train", run_dir + ".yaml"]) == 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_kto")
    model_dir = str(root / "model")
    build_hf_model("llama2", model_dir)
    _save_word_tokenizer(model_dir)
    rows = _records(STEPS * BATCH, seed=5)
    data_path = str(root / "unpaired.jsonl")
    with open(data_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return model_dir, rows, data_path


def _column(logged, key):
    return np.array([r[key] for r in logged], np.float64)


def _unpadded(ids_rows):
    return [[t for t in ids if t != PAD_ID] for ids in ids_rows]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_per_step_metrics_match_trl(setup, tmp_path, case):
    model_dir, rows, data_path = setup
    loss_type, options = CASES[case]
    theirs, seen = _run_trl(model_dir, rows, loss_type, options, str(tmp_path / "trl"))
    ours = _run_alignjax(model_dir, data_path, loss_type, options, str(tmp_path / "alignjax"))

    # TRL's batches are the records in file order, and (kto) its KL rows pair prompt i
    # with completion i - 1 of the same batch, as alignjax's UnpairedBatch does.
    assert len(seen) == STEPS
    for step, inputs in enumerate(seen):
        batch = rows[step * BATCH : (step + 1) * BATCH]
        prompt_ids = [[BOS_ID] + _word_ids(r["prompt"]) for r in batch]
        completion_ids = [_word_ids(r["completion"]) + [EOS_ID] for r in batch]
        assert _unpadded(inputs["input_ids"]) == [p + c for p, c in zip(prompt_ids, completion_ids)]
        if loss_type == "kto":
            kl_expected = [p + completion_ids[i - 1] for i, p in enumerate(prompt_ids)]
            assert _unpadded(inputs["KL_input_ids"]) == kl_expected
        else:
            assert "KL_input_ids" not in inputs

    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, STEPS + 1))
    assert np.ptp(_column(theirs, "loss")) > 1e-2  # the runs moved: matching is not trivial
    if loss_type == "kto":
        assert np.max(_column(theirs, "kl")) > 1.0  # the reference point is in play
    report = {}
    for key in METRICS:
        a, b = _column(ours, key), _column(theirs, key)
        zero = b == 0
        assert np.all(np.abs(a[zero]) <= ZERO_ATOL), f"{loss_type} {key}: {a[zero]} where TRL's is 0"
        scale = np.abs(b)
        if key == "rewards/margins":
            # A difference of two means that may cross 0: relative to the means it subtracts.
            scale = np.abs(_column(theirs, "rewards/chosen")) + np.abs(_column(theirs, "rewards/rejected"))
        report[key] = float(np.max(np.abs(a - b)[~zero] / scale[~zero], initial=0.0))
    print(f"{case}: max relative difference over {STEPS} steps {report}")
    for key, rel in report.items():
        assert rel <= REL_TOL, f"{case} {key}: {rel:.2e}"
