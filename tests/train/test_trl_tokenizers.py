"""BOS and truncation as TRL does them: per-step DPO losses against TRL's DPOTrainer for
three tokenizers (adds BOS on encode; defines a BOS it does not add, as SmolLM2's; has no
BOS, as Qwen's), plain-text and conversational records, four loss types, with truncation
active (`max_length` below the longest pair).

TRL tokenizes plain records with `tokenizer(text)` (BOS exactly when the tokenizer adds
it) and conversational ones with `apply_chat_template` (whatever the template writes).
alignjax must give the same ids, and hence the same losses, in every case. The reference
is TRL itself, run here with PyTorch.
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

SPECIAL = ("<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>")  # ids 0..5
WORDS = tuple(f"w{i}" for i in range(89))  # ids 6..94; <unk> 95: the model's 96
UNK = "<unk>"
# A moderate learning rate: at 1e-2 IPO's large gradients make five steps chaotic enough
# that float noise (~1e-7 per op, different kernels on the two sides) grows to 1e-3.
STEPS, BATCH, LR, BETA, SMOOTHING = 5, 4, 3e-3, 0.1, 0.1
MAX_LENGTH = 16  # pairs reach ~24 tokens: every batch holds truncated sequences
REL_TOL = 1e-4

# Role markers and words are whitespace-separated, so TRL's "tokenize prompt + response as
# one text" and alignjax's "prompt and response apart" agree token for token.
TEMPLATE = (
    "{% if with_bos %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}{{ ' <|' + m['role'] + '|> ' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ ' ' + eos_token }}{% else %}{{ ' <|end|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ ' <|assistant|>' }}{% endif %}"
)
TOKENIZERS = {
    # name: (BOS token, post-processor adds it, the chat template writes it)
    "adds_bos": ("<s>", True, True),  # Llama 2
    "bos_not_added": ("<s>", False, False),  # SmolLM2: bos_token defined, never added
    "no_bos": (None, False, False),  # Qwen
}


def _save_tokenizer(kind, out_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    bos, adds, template_bos = TOKENIZERS[kind]
    vocab = {t: i for i, t in enumerate((*SPECIAL, *WORDS, UNK))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    core.add_special_tokens(list(SPECIAL))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token="</s>", pad_token="<pad>", unk_token=UNK
    )
    tokenizer.chat_template = TEMPLATE.replace("with_bos", "true" if template_bos else "false")
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _records(fmt, n, seed=0):
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))

    out = []
    for _ in range(n):
        prompt, chosen, rejected = words(2, 7), words(4, 14), words(4, 14)
        if fmt == "plain":
            out.append(dict(prompt=prompt, chosen=" " + chosen, rejected=" " + rejected))
        else:
            out.append(
                dict(
                    prompt=[{"role": "user", "content": prompt}],
                    chosen=[{"role": "assistant", "content": chosen}],
                    rejected=[{"role": "assistant", "content": rejected}],
                )
            )
    return out


def _run_trl(model_dir, rows, loss, out_dir):
    # One thread: PyTorch's parallel reductions may split work differently from run to run,
    # and a hinge pair sitting at its kink turns that noise into a different step.
    torch.set_num_threads(1)
    args = trl.DPOConfig(
        output_dir=out_dir,
        loss_type=[loss],
        beta=BETA,
        label_smoothing=SMOOTHING if loss == "robust" else 0.0,
        learning_rate=LR,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        max_length=MAX_LENGTH,
        truncation_mode="keep_start",
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # noqa: E731
    seen = []

    class Recording(trl.DPOTrainer):
        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                seen.append(inputs["input_ids"].tolist())
            return super().compute_loss(model, inputs, *rest, **kwargs)

    trainer = Recording(
        model=load(),
        ref_model=load(),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h], seen


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
            "max_prompt_length": MAX_LENGTH - 1,
        },
        "loss": {"type": loss, "beta": BETA, "label_smoothing": SMOOTHING if loss == "robust" else 0.0},
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
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_tokenizers")
    out = {}
    for kind in TOKENIZERS:
        out[kind] = str(root / kind)
        build_hf_model("llama2", out[kind])
        _save_tokenizer(kind, out[kind])
    return out


def _expected_ids(kind, fmt, tokenizer, row, side="chosen"):
    """What both trainers must feed the model for one sequence, before truncation."""
    _, adds, template_bos = TOKENIZERS[kind]
    bos_id = [tokenizer.bos_token_id] if (adds if fmt == "plain" else template_bos) else []
    ids = tokenizer.convert_tokens_to_ids
    if fmt == "plain":
        body = (row["prompt"] + row[side]).split() + ["</s>"]
    else:
        body = ["<|user|>", *row["prompt"][0]["content"].split(), "<|end|>", "<|assistant|>"]
        body += [*row[side][0]["content"].split(), "</s>"]
    return bos_id + ids(body)


# Tokenization does not depend on the loss, nor the loss on the tokenizer: sigmoid runs on
# all six (tokenizer, format) cases, and each other loss once per tokenizer, on both formats
# between them, so every loss meets every tokenizer and every tokenizer both formats.
CASES = [(kind, fmt, "sigmoid") for kind in TOKENIZERS for fmt in ("plain", "conversational")] + [
    (kind, ("plain", "conversational")[(i + j) % 2], loss)
    for i, kind in enumerate(TOKENIZERS)
    for j, loss in enumerate(("ipo", "hinge", "robust"))
]


@pytest.mark.slow
@pytest.mark.parametrize("kind,fmt,loss", CASES)
def test_per_step_losses_match_trl(model_dirs, tmp_path, kind, fmt, loss):
    model_dir = model_dirs[kind]
    rows = _records(
        fmt, STEPS * BATCH, seed=CASES.index((kind, fmt, loss))
    )  # fixed: hash() is salted per process
    data_path = str(tmp_path / "pairs.jsonl")
    with open(data_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    trl_logged, trl_ids = _run_trl(model_dir, rows, loss, str(tmp_path / "trl"))
    ours = _run_alignjax(model_dir, data_path, loss, str(tmp_path / "alignjax"))

    # The ids TRL trained on are the ones written out by hand, truncated to max_length: the
    # BOS rule under test, and truncation active.
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    first = [t for t in trl_ids[0][0] if t != tokenizer.pad_token_id]
    assert first == _expected_ids(kind, fmt, tokenizer, rows[0])[:MAX_LENGTH]
    lengths = [
        len(_expected_ids(kind, fmt, tokenizer, r, side)) for r in rows for side in ("chosen", "rejected")
    ]
    assert sum(n > MAX_LENGTH for n in lengths) >= STEPS

    assert [r["step"] for r in ours] == [r["step"] for r in trl_logged] == list(range(1, STEPS + 1))
    trl_loss = np.array([r["loss"] for r in trl_logged])
    our_loss = np.array([r["loss"] for r in ours])
    assert np.ptp(trl_loss) > 1e-3  # the runs moved: matching is not trivial
    np.testing.assert_allclose(our_loss, trl_loss, rtol=REL_TOL, atol=1e-7)
    for key in ("logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(
            [r[key] for r in ours], [r[key] for r in trl_logged], rtol=REL_TOL, err_msg=key
        )
