"""TRL's trainers and `alignjax train` on the same records and settings, compared per step.

A parity test describes one run once: the records, the loss options of each side, the
optimizer. `trl_run` trains TRL's trainer (PyTorch, one thread, the records in file order)
and records the inputs of every training batch; `alignjax_run` writes the same settings as
an alignjax config and trains it through the CLI; both return the per-step records they
logged, which `column` turns into arrays to compare. The reference is always TRL itself.

Same token ids on both sides by construction: word-level tokenizers (whitespace-separated
words, BOS added by the post-processor as Llama's does where asked) and responses that
start with a space, so TRL's "tokenize prompt + response as one string" and alignjax's
"tokenize prompt and response apart, BOS once, EOS appended" agree token for token.
"""

from __future__ import annotations

import dataclasses
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

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2: hf_models' pad/bos/eos ids
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
WORDS = tuple(f"w{i}" for i in range(92))  # ids 3..94; with <unk> (95) the model's 96
UNK = "<unk>"
MAX_LENGTH = 64  # longer than any sequence `random_pairs` writes: neither side truncates
MAX_PROMPT_LENGTH = 32


def word_ids(text: str) -> list[int]:
    """Ids of whitespace-separated words under `save_word_tokenizer`'s vocabulary."""
    vocab = {w: i + len(SPECIAL_TOKENS) for i, w in enumerate(WORDS)}
    return [vocab[w] for w in text.split()]


def save_word_tokenizer(
    out_dir, special=SPECIAL_TOKENS, words=WORDS, bos="<s>", adds_bos=True, template=None
):
    """A word-level tokenizer saved to `out_dir`; `adds_bos` puts BOS in front on encode."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate((*special, *words, UNK))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    core.add_special_tokens(list(special))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token="</s>", pad_token="<pad>", unk_token=UNK
    )
    if template is not None:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def word_model(out_dir, **model_kwargs) -> str:
    """A random float32 tiny Llama with the word tokenizer, saved to `out_dir`."""
    out_dir = str(out_dir)
    build_hf_model("llama2", out_dir, **model_kwargs)
    save_word_tokenizer(out_dir)
    return out_dir


def random_pairs(n: int, seed: int = 0) -> list[dict]:
    """Plain-text preference records; responses start with a space."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))

    return [dict(prompt=words(2, 8), chosen=" " + words(1, 8), rejected=" " + words(1, 8)) for _ in range(n)]


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def trl_run(trainer_cls, args, model, rows, *, ref_model=None, record=("input_ids",), model_dir=None):
    """(logged per-step records, the recorded inputs of every training batch) of TRL's trainer.

    `model` is a Hugging Face directory (loaded as a float32 causal LM) or a loaded model;
    `ref_model` likewise, or None where the trainer derives its own reference. One thread:
    PyTorch's parallel reductions may split work differently from run to run, and a pair
    sitting at a loss's kink turns that noise into a different step."""
    torch.set_num_threads(1)
    seen = []

    class Recording(trainer_cls):
        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                seen.append({k: inputs[k].tolist() for k in record if k in inputs})
            return super().compute_loss(model, inputs, *rest, **kwargs)

    inputs = dict(
        model=load_causal_lm(model),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(str(model_dir or model)),
    )
    if ref_model is not None:
        inputs["ref_model"] = load_causal_lm(ref_model)
    trainer = Recording(**inputs)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h], seen


def load_causal_lm(model):
    if isinstance(model, (str, os.PathLike)):
        return transformers.AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    return model


@dataclasses.dataclass(frozen=True)
class Run:
    """One short sequential run on CPU, spelled out for each trainer: AdamW, linear decay
    from `lr` without warm-up, no gradient accumulation, records in file order, a log every
    step."""

    steps: int
    batch: int
    lr: float
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-8

    def trl_args(self, config_cls, out_dir, **options):
        """TRL's config (`DPOConfig`, `KTOConfig`, `RewardConfig`); `options` override."""
        settings = dict(
            learning_rate=self.lr,
            lr_scheduler_type="linear",
            warmup_steps=0,
            optim="adamw_torch",
            weight_decay=self.weight_decay,
            adam_epsilon=self.adam_eps,
            max_grad_norm=self.max_grad_norm,
            per_device_train_batch_size=self.batch,
            gradient_accumulation_steps=1,
            max_steps=self.steps,
            max_length=MAX_LENGTH,
            train_sampling_strategy="sequential",  # file order, as alignjax's data.shuffle: false
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            bf16=False,
            seed=0,
        )
        settings.update(options)
        return config_cls(output_dir=str(out_dir), **settings)

    def alignjax_config(self, run_dir, model_dir, data_path, loss, *, data=None, optim=None, model=None):
        """The alignjax config of the same run; `data`, `optim` and `model` keys override."""
        return {
            "run_dir": str(run_dir),
            "seed": 0,
            "model": {"hf_path": str(model_dir), **(model or {})},
            "data": {
                "train": str(data_path),
                "shuffle": False,
                "max_length": MAX_LENGTH,
                "max_prompt_length": MAX_PROMPT_LENGTH,
                **(data or {}),
            },
            "loss": loss,
            "optim": {
                "name": "adamw",
                "lr": self.lr,
                "schedule": "linear",
                "warmup_steps": 0,
                "weight_decay": self.weight_decay,
                "eps": self.adam_eps,
                "max_grad_norm": self.max_grad_norm,
                **(optim or {}),
            },
            "train": {"steps": self.steps, "batch_size": self.batch, "grad_accum": 1, "log_every": 1},
            "logging": {"tensorboard": False, "progress_bar": False},
        }


def alignjax_train(config: dict) -> str:
    """Write `config` beside its run directory and train it in this process; the run_dir."""
    import yaml

    from alignjax import cli

    path = config["run_dir"] + ".yaml"
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    assert cli.main(["train", path]) == 0
    return config["run_dir"]


def alignjax_run(config: dict) -> list[dict]:
    """The per-step training records (`metrics.jsonl` lines with a loss) of `config`'s run."""
    run_dir = alignjax_train(config)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


@dataclasses.dataclass(frozen=True)
class Compared:
    """One run on both trainers: the records, what each logged per step, TRL's batches."""

    rows: list
    theirs: list  # TRL's per-step log records
    seen: list  # the recorded inputs of TRL's training batches, one dict a step
    ours: list  # alignjax's per-step metrics records

    @property
    def trl_input_ids(self) -> list:
        return [inputs["input_ids"] for inputs in self.seen]


def run_both(trainer_cls, args, model, rows, config: dict, **trl_options) -> Compared:
    """TRL's trainer (`trl_run` with `trl_options`) and `alignjax train` on `config`."""
    theirs, seen = trl_run(trainer_cls, args, model, rows, **trl_options)
    return Compared(rows, theirs, seen, alignjax_run(config))


def column(logged, key) -> np.ndarray:
    return np.array([record[key] for record in logged], np.float64)


def max_relative(ours, theirs) -> float:
    return float(np.max(np.abs(ours - theirs) / np.abs(theirs)))


def assert_same_steps(ours, theirs, steps: int, *, min_loss_range: float):
    """Both logged steps 1..steps, and TRL's loss moved by at least `min_loss_range` over
    them: a run that never moved would match trivially."""
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, steps + 1))
    assert np.ptp(column(theirs, "loss")) > min_loss_range


def unpadded(ids_rows, pad_id=PAD_ID) -> list[list[int]]:
    return [[t for t in ids if t != pad_id] for ids in ids_rows]


def assert_pair_batches(seen_ids, rows, batch: int, steps: int):
    """TRL trained on `rows` in file order, each batch's sequences the hand-tokenised ones."""
    assert len(seen_ids) == steps
    for step, batch_ids in enumerate(seen_ids):
        expected = pair_ids(rows[step * batch : (step + 1) * batch])
        assert unpadded(batch_ids) == expected, f"step {step + 1}"


def pair_ids(rows, bos=(BOS_ID,)) -> list[list[int]]:
    """A DPO batch's sequences as TRL lays them out: the chosen ones, then the rejected ones."""
    return [
        [*bos] + word_ids(r["prompt"]) + word_ids(r[side]) + [EOS_ID]
        for side in ("chosen", "rejected")
        for r in rows
    ]
