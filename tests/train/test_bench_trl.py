"""`alignjax bench trl`'s data: both trainers read one file of pairs whose lengths the
byte tokenizer (a token a byte, plus BOS and EOS) makes exact."""

import json

from alignjax.data.byte_tokenizer import make_byte_tokenizer
from alignjax.train.bench_trl import pair_lengths, trl_padding_fraction, write_pairs


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
