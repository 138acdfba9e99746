"""TRL's DPOConfig options against TRL's DPOTrainer, step by step: f-DPO's divergences,
LD-DPO (`ld_alpha`), WPO (`use_weighting`), reference-free DPO and TR-DPO (`sync_ref_model`).

One tiny Llama and one word-level tokenizer (`test_trl_parity`'s: the same token ids on
both sides by construction), the same pairs in file order, AdamW with the same settings;
each case changes only the option under test. The reference is TRL itself, run here with
PyTorch on one thread. TRL 1.16 has no `reference_free`: its older meaning, a reference
that gives every response log-prob 0, is TRL run on reference log-probs of 0 (the
precomputed-reference path with the table replaced by zeros).
"""

import numpy as np
import pytest

import trl_harness as h  # noqa: E402
from trl_harness import trl  # noqa: E402

STEPS, BATCH, LR, BETA = 5, 4, 3e-3, 0.1
RUN = h.Run(STEPS, BATCH, LR)
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


class ZeroReferenceDPOTrainer(trl.DPOTrainer):
    """TRL on reference log-probs of 0: its precomputed-reference table, filled with zeros."""

    def _precompute_ref_logps(self, dataset, name, batch_size):
        zeros = [0.0] * len(dataset)
        return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_dpo_options")
    model_dir = h.word_model(root / "model")
    rows = h.random_pairs(STEPS * BATCH, seed=3)
    return model_dir, rows, h.write_jsonl(root / "pairs.jsonl", rows)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_per_step_metrics_match_trl(setup, tmp_path, case):
    model_dir, rows, data_path = setup
    trl_options, loss = CASES[case]
    zero_reference = case == "reference_free"
    args = RUN.trl_args(
        trl.DPOConfig,
        tmp_path / "trl",
        beta=BETA,
        precompute_ref_log_probs=zero_reference,
        **trl_options,
    )
    theirs, _ = h.trl_run(
        ZeroReferenceDPOTrainer if zero_reference else trl.DPOTrainer,
        args,
        model_dir,
        rows,
        ref_model=None if zero_reference else model_dir,
    )
    config = RUN.alignjax_config(
        tmp_path / "alignjax",
        model_dir,
        data_path,
        {"beta": BETA, **loss},
    )
    ours = h.alignjax_run(config)

    h.assert_same_steps(ours, theirs, STEPS, min_loss_range=1e-3)
    report = {}
    for key in ("loss", "logps/chosen", "logps/rejected", "grad_norm"):
        report[key] = h.max_relative(h.column(ours, key), h.column(theirs, key))
    margin_diff = float(
        np.max(np.abs(h.column(ours, "rewards/margins") - h.column(theirs, "rewards/margins")))
    )
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
