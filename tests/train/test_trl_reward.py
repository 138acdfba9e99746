"""Reward-model training against TRL's RewardTrainer: one tiny LlamaForSequenceClassification, step by step.

Both trainers start from the same Hugging Face sequence-classification checkpoint (random
float32, built locally), read the same plain-text pairs in file order and are configured
alike (RewardConfig's names -> alignjax's keys as the README's TRL table maps them). The
reference is TRL itself, run with PyTorch.

The word-level tokenizer of the DPO parity test gives both sides the same ids: TRL
appends EOS to each response's text and tokenizes prompt + response as one string,
alignjax tokenizes them apart with BOS once and EOS appended.
"""

import json
import os

import numpy as np
import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from hf_models import build_hf_model  # noqa: E402
from test_trl_parity import BOS_ID, EOS_ID, PAD_ID, _pairs, _save_word_tokenizer, _word_ids  # noqa: E402

STEPS = 5
BATCH_SIZE = 4
LR = 3e-3
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
ADAM_EPS = 1e-8
MAX_LENGTH = 64  # longer than any sequence here: neither side truncates or filters
CENTER = 0.01
RTOL = 1e-4  # the bound on every logged quantity


def _run_trl(model_dir, rows, out_dir):
    torch.set_num_threads(1)
    args = trl.RewardConfig(
        output_dir=out_dir,
        center_rewards_coefficient=CENTER,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=WEIGHT_DECAY,
        adam_epsilon=ADAM_EPS,
        max_grad_norm=MAX_GRAD_NORM,
        per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1,
        max_steps=STEPS,
        max_length=MAX_LENGTH,
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    seen_input_ids = []

    class RecordingRewardTrainer(trl.RewardTrainer):
        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                seen_input_ids.append(inputs["input_ids"].tolist())
            return super().compute_loss(model, inputs, *rest, **kwargs)

    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    trainer = RecordingRewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    return logged, seen_input_ids


def _run_alignjax(model_dir, data_path, run_dir, margins):
    import yaml

    from alignjax import cli

    config = {
        "run_dir": run_dir,
        "seed": 0,
        "model": {"hf_path": model_dir},
        "data": {
            "train": data_path,
            "shuffle": False,
            "max_length": MAX_LENGTH,
            "max_prompt_length": 32,
            # TRL reads a `margin` column whenever the data has one; alignjax when told to.
            "margin_field": "margin" if margins else None,
        },
        "loss": {"type": "reward", "reward": {"center_rewards_coefficient": CENTER}},
        "optim": {
            "name": "adamw",
            "lr": LR,
            "schedule": "linear",
            "warmup_steps": 0,
            "weight_decay": WEIGHT_DECAY,
            "eps": ADAM_EPS,
            "max_grad_norm": MAX_GRAD_NORM,
        },
        "train": {"steps": STEPS, "batch_size": BATCH_SIZE, "grad_accum": 1, "log_every": 1},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    config_path = run_dir + ".yaml"
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    assert cli.main(["train", config_path]) == 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module", params=[False, True], ids=["no-margin", "margin"])
def both_runs(request, tmp_path_factory):
    margins = request.param
    root = tmp_path_factory.mktemp("trl_reward")
    model_dir = str(root / "model")
    build_hf_model("llama2", model_dir, head="sequence_classification", num_labels=1)
    _save_word_tokenizer(model_dir)
    rows = _pairs(STEPS * BATCH_SIZE, seed=3)
    if margins:  # TRL's optional per-pair column, some negative, some above typical margins
        draws = np.random.default_rng(4).uniform(-1.0, 2.0, len(rows))
        rows = [{**r, "margin": round(float(m), 3)} for r, m in zip(rows, draws)]
    data_path = str(root / "pairs.jsonl")
    with open(data_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    trl_logged, trl_input_ids = _run_trl(model_dir, rows, str(root / "trl"))
    alignjax_logged = _run_alignjax(model_dir, data_path, str(root / "alignjax"), margins)
    return rows, trl_logged, trl_input_ids, alignjax_logged


def _column(logged, key):
    return np.array([record[key] for record in logged], np.float64)


@pytest.mark.slow
def test_trl_scores_the_hand_tokenised_sequences(both_runs):
    rows, _, trl_input_ids, _ = both_runs
    assert len(trl_input_ids) == STEPS
    for step, batch_ids in enumerate(trl_input_ids):
        batch_rows = rows[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
        expected = [
            [BOS_ID] + _word_ids(r["prompt"]) + _word_ids(r[side]) + [EOS_ID]
            for side in ("chosen", "rejected")
            for r in batch_rows
        ]
        assert [[t for t in ids if t != PAD_ID] for ids in batch_ids] == expected, f"step {step + 1}"


@pytest.mark.slow
def test_per_step_loss_metrics_and_gradient_norm_match_trl(both_runs):
    _, trl_logged, _, alignjax_logged = both_runs
    assert [r["step"] for r in trl_logged] == list(range(1, STEPS + 1))
    assert [r["step"] for r in alignjax_logged] == list(range(1, STEPS + 1))
    trl_loss = _column(trl_logged, "loss")
    assert np.ptp(trl_loss) > 0.1  # training moved: a run that never did would match trivially
    for key in ("loss", "margin", "mean_reward", "min_reward", "max_reward", "grad_norm"):
        np.testing.assert_allclose(
            _column(alignjax_logged, key), _column(trl_logged, key), rtol=RTOL, err_msg=key
        )
    np.testing.assert_array_equal(_column(alignjax_logged, "accuracy"), _column(trl_logged, "accuracy"))
    np.testing.assert_allclose(
        _column(alignjax_logged, "lr"), _column(trl_logged, "learning_rate"), rtol=1e-6
    )
