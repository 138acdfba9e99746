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

import json
import math
import os
import random

import numpy as np
import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from hf_models import build_hf_model  # noqa: E402

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2: hf_models' pad/bos/eos ids
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
WORDS = tuple(f"w{i}" for i in range(92))  # ids 3..94; with <unk> (95) the model's 96
UNK = "<unk>"

# One run, described once and spelled out for each trainer below.
STEPS = 5
BATCH_SIZE = 4
LR = 1e-2  # large, so each step moves the loss well away from ln 2
BETA = 0.1
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0  # step 1's gradient norm is ~4: clipping is active
ADAM_EPS = 1e-8
MAX_LENGTH = 64  # longer than any sequence here: neither side truncates
MAX_PROMPT_LENGTH = 32

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


def _word_ids(text):
    vocab = {w: i + len(SPECIAL_TOKENS) for i, w in enumerate(WORDS)}
    return [vocab[w] for w in text.split()]


def _save_word_tokenizer(out_dir):
    """Whitespace words -> ids, BOS added by the post-processor (as Llama's tokenizer does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate((*SPECIAL_TOKENS, *WORDS, UNK))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)]
    )
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=UNK
    )
    tokenizer.save_pretrained(out_dir)


def _pairs(n, seed=0):
    """Plain-text TRL records; responses start with a space so prompt + response splits cleanly."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))

    return [dict(prompt=words(2, 8), chosen=" " + words(1, 8), rejected=" " + words(1, 8)) for _ in range(n)]


def _run_trl(model_dir, rows, out_dir):
    """(per-step logged metrics, input_ids of each step's batch) from TRL's DPOTrainer."""
    args = trl.DPOConfig(
        output_dir=out_dir,
        loss_type=["sigmoid"],
        beta=BETA,
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
        precompute_ref_log_probs=False,
        train_sampling_strategy="sequential",  # file order, as alignjax's data.shuffle: false
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # noqa: E731
    seen_input_ids = []

    class RecordingDPOTrainer(trl.DPOTrainer):
        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                seen_input_ids.append(inputs["input_ids"].tolist())
            return super().compute_loss(model, inputs, *rest, **kwargs)

    trainer = RecordingDPOTrainer(
        model=load(),
        ref_model=load(),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    return logged, seen_input_ids


def _run_alignjax(model_dir, data_path, run_dir):
    """Per-step records of metrics.jsonl from `alignjax train`, configured like `_run_trl`."""
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
            "max_prompt_length": MAX_PROMPT_LENGTH,
        },
        "loss": {"type": "sigmoid", "beta": BETA},
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
        records = [json.loads(line) for line in f]
    return [r for r in records if "loss" in r]


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_parity")
    model_dir = str(root / "model")
    build_hf_model("llama2", model_dir)
    _save_word_tokenizer(model_dir)
    rows = _pairs(STEPS * BATCH_SIZE)
    data_path = str(root / "pairs.jsonl")
    with open(data_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    trl_logged, trl_input_ids = _run_trl(model_dir, rows, str(root / "trl"))
    alignjax_logged = _run_alignjax(model_dir, data_path, str(root / "alignjax"))
    return rows, trl_logged, trl_input_ids, alignjax_logged


def _column(logged, key):
    return np.array([record[key] for record in logged], np.float64)


@pytest.mark.slow
def test_trl_sees_the_hand_tokenised_pairs_in_file_order(both_runs):
    rows, _, trl_input_ids, _ = both_runs
    assert len(trl_input_ids) == STEPS
    for step, batch_ids in enumerate(trl_input_ids):
        batch_rows = rows[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
        # TRL's batch: the chosen sequences, then the rejected ones, right-padded.
        expected = [
            [BOS_ID] + _word_ids(r["prompt"]) + _word_ids(r[side]) + [EOS_ID]
            for side in ("chosen", "rejected")
            for r in batch_rows
        ]
        got = [[t for t in ids if t != PAD_ID] for ids in batch_ids]
        assert got == expected, f"step {step + 1}"


@pytest.mark.slow
def test_first_step_loss_is_ln2_on_both(both_runs):
    _, trl_logged, _, alignjax_logged = both_runs
    assert trl_logged[0]["step"] == alignjax_logged[0]["step"] == 1
    assert trl_logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert alignjax_logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.slow
def test_per_step_loss_matches_trl(both_runs):
    _, trl_logged, _, alignjax_logged = both_runs
    assert [r["step"] for r in trl_logged] == list(range(1, STEPS + 1))
    assert [r["step"] for r in alignjax_logged] == list(range(1, STEPS + 1))
    trl_loss, alignjax_loss = _column(trl_logged, "loss"), _column(alignjax_logged, "loss")
    # The updates matter: a run that never moved would match trivially.
    assert np.max(np.abs(trl_loss[1:] - math.log(2))) > 0.05
    np.testing.assert_allclose(alignjax_loss, trl_loss, rtol=0, atol=LOSS_ATOL)


@pytest.mark.slow
def test_per_step_rewards_logps_and_schedule_match_trl(both_runs):
    _, trl_logged, _, alignjax_logged = both_runs
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        np.testing.assert_allclose(
            _column(alignjax_logged, key), _column(trl_logged, key), rtol=0, atol=REWARD_ATOL, err_msg=key
        )
    for key in ("logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(
            _column(alignjax_logged, key), _column(trl_logged, key), rtol=LOGPS_RTOL, err_msg=key
        )
    # Gradient norm before clipping: the same gradients, not only the same losses.
    np.testing.assert_allclose(
        _column(alignjax_logged, "grad_norm"), _column(trl_logged, "grad_norm"), rtol=GRAD_NORM_RTOL
    )
    # The learning rate each step used: linear decay from LR, the first step at LR.
    expected_lr = LR * (1 - np.arange(STEPS) / STEPS)
    np.testing.assert_allclose(_column(trl_logged, "learning_rate"), expected_lr, rtol=1e-6)
    np.testing.assert_allclose(_column(alignjax_logged, "lr"), expected_lr, rtol=1e-6)
