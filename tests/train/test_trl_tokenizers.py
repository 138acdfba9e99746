"""BOS and truncation as TRL does them: per-step DPO losses against TRL's DPOTrainer for
three tokenizers (adds BOS on encode; defines a BOS it does not add, as SmolLM2's; has no
BOS, as Qwen's), plain-text and conversational records, four loss types, with truncation
active (`max_length` below the longest pair).

TRL tokenizes plain records with `tokenizer(text)` (BOS exactly when the tokenizer adds
it) and conversational ones with `apply_chat_template` (whatever the template writes).
alignjax must give the same ids, and hence the same losses, in every case. The reference
is TRL itself, run here with PyTorch.
"""

import random

import numpy as np
import pytest

import trl_harness as h  # noqa: E402
from trl_harness import transformers, trl  # noqa: E402
from hf_models import build_hf_model  # noqa: E402

SPECIAL = ("<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>")  # ids 0..5
WORDS = tuple(f"w{i}" for i in range(89))  # ids 6..94; <unk> 95: the model's 96
# A moderate learning rate: at 1e-2 IPO's large gradients make five steps chaotic enough
# that float noise (~1e-7 per op, different kernels on the two sides) grows to 1e-3.
STEPS, BATCH, LR, BETA, SMOOTHING = 5, 4, 3e-3, 0.1, 0.1
RUN = h.Run(STEPS, BATCH, LR)
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
    bos, adds, template_bos = TOKENIZERS[kind]
    template = TEMPLATE.replace("with_bos", "true" if template_bos else "false")
    return h.save_word_tokenizer(
        out_dir, special=SPECIAL, words=WORDS, bos=bos, adds_bos=adds, template=template
    )


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
    data_path = h.write_jsonl(tmp_path / "pairs.jsonl", rows)
    smoothing = SMOOTHING if loss == "robust" else 0.0
    args = RUN.trl_args(
        trl.DPOConfig,
        tmp_path / "trl",
        loss_type=[loss],
        beta=BETA,
        label_smoothing=smoothing,
        max_length=MAX_LENGTH,
        truncation_mode="keep_start",
    )
    trl_logged, seen = h.trl_run(trl.DPOTrainer, args, model_dir, rows, ref_model=model_dir)
    trl_ids = [s["input_ids"] for s in seen]
    config = RUN.alignjax_config(
        tmp_path / "alignjax",
        model_dir,
        data_path,
        {"type": loss, "beta": BETA, "label_smoothing": smoothing},
        data={"max_length": MAX_LENGTH, "max_prompt_length": MAX_LENGTH - 1},
    )
    ours = h.alignjax_run(config)

    # The ids TRL trained on are the ones written out by hand, truncated to max_length: the
    # BOS rule under test, and truncation active.
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    first = h.unpadded(trl_ids[0], tokenizer.pad_token_id)[0]
    assert first == _expected_ids(kind, fmt, tokenizer, rows[0])[:MAX_LENGTH]
    lengths = [
        len(_expected_ids(kind, fmt, tokenizer, r, side)) for r in rows for side in ("chosen", "rejected")
    ]
    assert sum(n > MAX_LENGTH for n in lengths) >= STEPS

    h.assert_same_steps(ours, trl_logged, STEPS, min_loss_range=1e-3)
    np.testing.assert_allclose(h.column(ours, "loss"), h.column(trl_logged, "loss"), rtol=REL_TOL, atol=1e-7)
    for key in ("logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(h.column(ours, key), h.column(trl_logged, key), rtol=REL_TOL, err_msg=key)
