"""`alignjax bench trl`: both trainers read one file of pairs whose lengths the byte
tokenizer (a token a byte, plus BOS and EOS) makes exact, and one checkpoint of the model
(a preset with its overrides) built for them."""

import json

import pytest

from alignjax.data.byte_tokenizer import make_byte_tokenizer
from alignjax.train.bench_trl import bench_vs_trl, hf_config, pair_lengths, trl_padding_fraction, write_pairs


def _sequence_tokens(path):
    tokenizer = make_byte_tokenizer()
    out = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            for side in ("chosen", "rejected"):
                out.append(len(tokenizer(row["prompt"] + row[side])["input_ids"]) + 1)  # + EOS
    return out


def test_ragged_lengths_span_a_quarter_to_all_of_max_length(tmp_path):
    sizes = pair_lengths(200, 512, "ragged")
    assert sizes == pair_lengths(200, 512, "ragged")  # seeded: the same data for both trainers
    write_pairs(str(tmp_path / "pairs.jsonl"), sizes)
    tokens = _sequence_tokens(tmp_path / "pairs.jsonl")
    assert min(tokens) >= 128 and max(tokens) <= 510
    assert min(tokens) < 150 and max(tokens) > 490  # drawn over the whole range
    assert 0.55 < sum(tokens) / len(tokens) / 512 < 0.70  # uniform: mean 0.625 of max_length


def test_full_lengths_fill_max_length(tmp_path):
    write_pairs(str(tmp_path / "pairs.jsonl"), pair_lengths(8, 512, "full"))
    assert _sequence_tokens(tmp_path / "pairs.jsonl") == [510] * 16


def test_trl_padding_fraction_pads_each_batch_to_its_longest():
    # BOS + prompt + response + EOS. Batch 1: sequences of 6, 4, 4, 4 tokens padded to 6;
    # batch 2: 4 and 4. 26 real tokens of 4 * 6 + 2 * 4 slots.
    assert trl_padding_fraction([(1, 3, 1), (1, 1, 1), (1, 1, 1)], 2) == 1 - 26 / 32
    assert trl_padding_fraction(pair_lengths(8, 512, "full"), 4) == 0


# The device check's toy model: the tiny preset cut to one layer of width 32.
TOY = ["num_hidden_layers=1", "hidden_size=32", "intermediate_size=64", "num_attention_heads=4"]


def test_bench_trl_passes_its_model_options_on(monkeypatch, capsys):
    import alignjax.train.bench_trl as bench_trl
    from alignjax.commands import bench

    calls = []
    monkeypatch.setattr(bench_trl, "bench_vs_trl", lambda *a, **kw: calls.append((a, kw)) or {"ok": 1})
    argv = ["trl", "--preset", "tiny", "--dtype", "bfloat16", "--attention-backend", "cudnn"]
    for override in TOY[:2]:
        argv += ["--preset-override", override]
    assert bench.main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": 1}
    assert (
        calls
        == [
            (
                (4, 512, 5, "full"),  # the defaults the documented CPU numbers ran with
                dict(preset="tiny", preset_overrides=TOY[:2], dtype="bfloat16", attention_backend="cudnn"),
            )
        ]
    )


def test_preset_overrides_are_yaml_values_and_the_byte_tokenizer_keeps_its_ids():
    cfg = hf_config(
        "tiny", ["num_hidden_layers=2", "rope_theta=250000.0", "rope_scaling={rope_type: default}"]
    )
    assert (cfg["num_hidden_layers"], cfg["rope_theta"]) == (2, 250000.0)
    assert cfg["rope_scaling"] == {"rope_type": "default"}
    tokenizer = make_byte_tokenizer()
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert "dtype" not in cfg  # float32 weights; each trainer picks its compute dtype
    llama = hf_config("llama3.2-1b", [])
    assert (llama["vocab_size"], llama["bos_token_id"]) == (128256, tokenizer.bos_token_id)
    with pytest.raises(ValueError, match="--preset-override vocab_size"):
        hf_config("tiny", ["vocab_size=100"])
    with pytest.raises(ValueError, match="name one"):
        hf_config(None, ["num_hidden_layers=2"])


@pytest.mark.slow
def test_both_trainers_run_the_same_preset_with_its_overrides():
    pytest.importorskip("trl")
    import torch

    report = bench_vs_trl(batch_size=2, max_length=32, steps=1, preset="tiny", preset_overrides=TOY)
    # Per layer: q 32x32, k and v 32x16 (2 KV heads of 8), o 32x32, gate and up 32x64, down
    # 64x32, two norms 32; the tied 512 x 32 table and the final norm.
    layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32
    assert report["model_params"] == report["alignjax_model_params"] == layer + 512 * 32 + 32 == 25696
    assert (report["model"], report["dtype"], report["attention_backend"]) == ("tiny", "float32", "xla")
    assert report["trl_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    # Full-length pairs: 2 pairs of two 30-token sequences (BOS, 28 bytes, EOS) a step.
    for side in ("alignjax", "trl"):
        assert report[f"{side}_tokens_per_s"] == pytest.approx(120 / report[f"{side}_step_s"], rel=1e-6)
