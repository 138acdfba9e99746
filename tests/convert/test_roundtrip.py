"""HF -> Orbax -> HF: bit-identical tensors, and transformers loads the result cleanly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from hf_models import FAMILY_CONFIGS, build_hf_model
from alignjax.convert import api
from alignjax.convert.safetensors_io import INDEX_FILE, iter_tensors


def _tokenizer(out_dir):
    """A small real tokenizer with a chat template, so the round trip carries it too."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{chr(97 + i): 3 + i for i in range(26)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(out_dir)


def _tensors(d):
    return {name: np.array(a) for name, a in iter_tensors(d)}


def _assert_bit_identical(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_round_trip_is_bit_identical_and_loads_cleanly(family, tmp_path):
    src, ckpt, out = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "out"
    build_hf_model(family, str(src))
    _tokenizer(str(src))
    api.hf_to_orbax(str(src), str(ckpt), scan_layers=family.startswith("gemma"))
    api.orbax_to_hf(str(ckpt), str(out))
    _assert_bit_identical(_tensors(str(src)), _tensors(str(out)))

    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok("abc")["input_ids"] == [3, 4, 5]
    assert tok.apply_chat_template([{"role": "user", "content": "ab"}], tokenize=False) == "ab"
    assert json.load(open(out / "generation_config.json"))["eos_token_id"] == 2


def test_bf16_sharded_round_trip(tmp_path):
    src, ckpt, out = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "out"
    model = build_hf_model("llama2", str(src))
    # Re-save in bfloat16 across several shards, the way large checkpoints arrive.
    model.to(torch.bfloat16).save_pretrained(str(src), max_shard_size="20KB")
    assert os.path.exists(src / INDEX_FILE)
    api.hf_to_orbax(str(src), str(ckpt))
    files = api.orbax_to_hf(str(ckpt) + "/0", str(out), max_shard_bytes=30_000)
    assert os.path.exists(out / INDEX_FILE) and sum(f.endswith(".safetensors") for f in files) > 1
    _assert_bit_identical(_tensors(str(src)), _tensors(str(out)))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert next(reloaded.parameters()).dtype == torch.bfloat16


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(ValueError, match="gemma2.*llama.*mistral.*qwen3"):
        api.hf_to_orbax(str(tmp_path), str(tmp_path / "out"))


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    build_hf_model("qwen2", str(tmp_path))
    config = json.load(open(tmp_path / "config.json"))
    config["intermediate_size"] = 128  # the saved MLP weights are 96 wide
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"model\.layers\.0\.mlp\.\w+_proj\.weight' has shape \((96, 64|64, 96)\).*implies \((128, 64|64, 128)\)",
    ):
        api.load_hf_model(str(tmp_path))


def test_cli_converts_both_directions(tmp_path):
    src, ckpt, out = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "out"
    build_hf_model("gemma", str(src))
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "alignjax.cli", *args], capture_output=True, text=True, check=False
    )
    help_out = run("--help")
    assert help_out.returncode == 0 and "convert" in help_out.stdout
    first = run("convert", "hf-to-orbax", str(src), str(ckpt))
    assert first.returncode == 0, first.stderr
    second = run("convert", "orbax-to-hf", str(ckpt), str(out))
    assert second.returncode == 0, second.stderr
    _assert_bit_identical(_tensors(str(src)), _tensors(str(out)))
    missing = run("convert", "orbax-to-hf", str(tmp_path / "nowhere"), str(out))
    assert missing.returncode == 2 and "no such checkpoint directory" in missing.stderr
