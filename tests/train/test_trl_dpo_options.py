"""TRL's DPOConfig options against TRL's DPOTrainer, step by step: f-DPO's divergences,
LD-DPO (`ld_alpha`), WPO (`use_weighting`), reference-free DPO and TR-DPO (`sync_ref_model`).

One tiny Llama and one word-level tokenizer (`test_trl_parity`'s: the same token ids on
both sides by construction), the same pairs in file order, AdamW with the same settings;
each case changes only the option under test. The reference is TRL itself, run here with
PyTorch on one thread. TRL 1.16 has no `reference_free`: its older meaning, a reference
that gives every response log-prob 0, is TRL run on reference log-probs of 0 (the
precomputed-reference path with the table replaced by zeros).
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
from test_trl_parity import MAX_LENGTH, MAX_PROMPT_LENGTH, _pairs, _save_word_tokenizer  # noqa: E402

STEPS, BATCH, LR, BETA = 5, 4, 3e-3, 0.1
REL_TOL = 1e-4
# Margins start at exactly 0 and stay near it, where a relative difference means little:
# an absolute bound on the same scale as the rewards' in `test_trl_parity`.
MARGIN_ATOL = 5e-6

# name: (TRL DPOConfig keys, alignjax `loss:` keys), the option on both sides.
CASES = {
    "forward_kl": (
        {"loss_type": ["sigmoid"], "f_divergence_type": "forward_kl"},
        {"type": "sigmoid", "f_divergence_type": "forward_kl"},
    ),
    "js_divergence": (
        {"loss_type": ["hinge"], "f_divergence_type": "js_divergence"},
        {"type": "hinge", "f_divergence_type": "js_divergence"},
    ),
    "alpha_divergence": (
        {"loss_type": ["ipo"], "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
        {"type": "ipo", "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
    ),
    # With the `sft` term, which reads the log-probs without LD's weighting.
    "ld_alpha": (
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "ld_alpha": 0.3},
        {"type": ["sigmoid", "sft"], "weights": [1.0, 0.5], "ld_alpha": 0.3},
    ),
    # Not with `sft`: TRL 1.16 scales its expanded (shared-memory) per-pair loss in place and fails.
    "use_weighting": (
        {"loss_type": ["sigmoid", "nca_pair"], "loss_weights": [1.0, 0.5], "use_weighting": True},
        {"type": ["sigmoid", "nca_pair"], "weights": [1.0, 0.5], "use_weighting": True},
    ),
    "reference_free": ({"loss_type": ["sigmoid"]}, {"type": "sigmoid", "reference_free": True}),
    # TR-DPO: the reference moves after steps 2 and 4, so steps 3 and 5 train against it.
    "sync_ref_model": (
        {
            "loss_type": ["sigmoid"],
            "sync_ref_model": True,
            "ref_model_mixup_alpha": 0.5,
            "ref_model_sync_steps": 2,
        },
        {"type": "sigmoid", "sync_ref_model": True, "ref_model_mixup_alpha": 0.5, "ref_model_sync_steps": 2},
    ),
}


def _run_trl(model_dir, rows, options, out_dir, zero_reference):
    torch.set_num_threads(1)
    args = trl.DPOConfig(
        output_dir=out_dir,
        beta=BETA,
        learning_rate=LR,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        max_length=MAX_LENGTH,
        precompute_ref_log_probs=zero_reference,
        train_sampling_strategy="sequential",
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

    class Trainer(trl.DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            zeros = [0.0] * len(dataset)
            return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)

    trainer = (Trainer if zero_reference else trl.DPOTrainer)(
        model=load(),
        ref_model=None if zero_reference else load(),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]


def _run_alignjax(model_dir, data_path, loss, run_dir):
    import yaml

    from alignjax import cli

    config = {
        "run_dir": run_dir,
        "model": {"hf_path": model_dir},
        "data": {
            "train": data_path,
            "shuffle": False,
            "max_length": MAX_LENGTH,
            "max_prompt_length": MAX_PROMPT_LENGTH,
        },
        "loss": {"beta": BETA, **loss},
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
    root = tmp_path_factory.mktemp("trl_dpo_options")
    model_dir = str(root / "model")
    build_hf_model("llama2", model_dir)
    _save_word_tokenizer(model_dir)
    rows = _pairs(STEPS * BATCH, seed=3)
    data_path = str(root / "pairs.jsonl")
    with open(data_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return model_dir, rows, data_path


def _column(logged, key):
    return np.array([r[key] for r in logged], np.float64)


def _max_rel(ours, theirs):
    return float(np.max(np.abs(ours - theirs) / np.abs(theirs)))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_per_step_metrics_match_trl(setup, tmp_path, case):
    model_dir, rows, data_path = setup
    trl_options, loss = CASES[case]
    zero_reference = case == "reference_free"
    theirs = _run_trl(model_dir, rows, trl_options, str(tmp_path / "trl"), zero_reference)
    ours = _run_alignjax(model_dir, data_path, loss, str(tmp_path / "alignjax"))

    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, STEPS + 1))
    trl_loss = _column(theirs, "loss")
    assert np.ptp(trl_loss) > 1e-3  # the runs moved: matching is not trivial
    report = {}
    for key in ("loss", "logps/chosen", "logps/rejected", "grad_norm"):
        report[key] = _max_rel(_column(ours, key), _column(theirs, key))
    margin_diff = float(np.max(np.abs(_column(ours, "rewards/margins") - _column(theirs, "rewards/margins"))))
    print(
        f"{case}: max relative difference over {STEPS} steps {report}, margins (absolute) {margin_diff:.1e}"
    )
    for key, rel in report.items():
        assert rel <= REL_TOL, f"{case} {key}: {rel:.2e}"
    assert margin_diff <= MARGIN_ATOL


def test_every_case_changes_trl_from_plain_dpo():
    """Each case's TRL settings differ from TRL's defaults in the option under test (and the
    reference-free case is the only one whose reference is replaced)."""
    defaults = trl.DPOConfig(output_dir="unused", report_to=[], use_cpu=True, bf16=False)
    for case, (trl_options, loss) in CASES.items():
        changed = {k for k, v in trl_options.items() if getattr(defaults, k) != v} - {
            "loss_type",
            "loss_weights",
        }
        option_keys = {k for k in loss if k not in ("type", "weights")}
        assert changed == option_keys - {"reference_free"}, case
