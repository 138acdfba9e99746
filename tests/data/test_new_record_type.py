"""Adding a record type takes one module and one registry line; the pipeline, the largest
batch and the data check then serve it. The byte tokenizer makes a plain prompt of n bytes
n + 1 tokens (BOS first) and a response of n bytes n + 1 tokens (EOS last)."""

import pytest
from datatest_helpers import run, write_jsonl

from alignjax.data.check import check_data
from alignjax.data.config import DataConfig
from alignjax.data.record_types import registry
from alignjax.data.shapes import largest_batch

BOS, EOS, PAD = 257, 258, 256
BUILT_IN = "preference, sft, prompt, cut, unpaired"
RECORDS = [
    {"prompt": "Hi", "response": "abc", "reward": 0.5},  # 3 + 4 tokens
    {"prompt": "Q", "response": "xy", "reward": -2},  # 2 + 3 tokens
    {"prompt": "Q", "response": "z"},  # line 3: no reward
    {"prompt": "Long", "response": "r" * 40, "reward": 1},  # 5 + 41 tokens, cut to 5 + 11
    {"prompt": "Q", "response": "w", "reward": True},  # line 5: not a number
]


@pytest.fixture
def scored(monkeypatch):
    import toy_record_type

    monkeypatch.setattr(registry, "_RECORD_TYPES", dict(registry._RECORD_TYPES))  # for this test only
    registry.register(toy_record_type.RECORD_TYPE)
    return toy_record_type


def _cfg(path, **kw):
    kw = {
        "record_type": "scored",
        "max_length": 16,
        "max_prompt_length": 8,
        "buckets": [8, 16],
        "batch_size": 2,
        "shuffle": False,
        "on_bad_record": "skip",
        **kw,
    }
    return DataConfig(sources=[{"path": path}], **kw)


def test_an_unregistered_record_type_names_the_key_and_the_registered_ones(tmp_path):
    cfg = _cfg(write_jsonl(tmp_path / "d.jsonl", RECORDS))
    message = f"data.record_type: 'scored' names no registered record type (registered: {BUILT_IN})"
    with pytest.raises(ValueError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        cfg.validate()


def test_padded_batches_hold_the_records_tokens_and_rewards(tmp_path, byte_tok, scored):
    batches, pipeline = run(_cfg(write_jsonl(tmp_path / "d.jsonl", RECORDS)), byte_tok)

    assert [type(b) for b in batches] == [scored.ScoredBatch] * 2
    first, second = batches
    assert first.tokens_BxL.tolist() == [
        [BOS, *b"Hi", *b"abc", EOS, PAD],
        [BOS, *b"Q", *b"xy", EOS, PAD, PAD, PAD],
    ]
    assert first.loss_mask_BxL.tolist() == [[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0, 0]]
    assert first.positions_BxL[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]
    assert first.reward_E.tolist() == [0.5, -2.0] and first.example_valid_E.tolist() == [1, 1]
    # The long record: its 5 prompt tokens, then the response cut to max_length (no EOS).
    assert second.tokens_BxL.shape == (2, 16)
    assert second.tokens_BxL[0].tolist() == [BOS, *b"Long", *b"r" * 11]
    assert (second.segment_ids_BxL[1] == 0).all()
    assert second.reward_E.tolist() == [1.0, 0.0] and second.example_valid_E.tolist() == [1, 0]
    assert pipeline.skipped_counts() == {"missing_field": 1, "wrong_type": 1}


def test_packed_batches_put_whole_examples_into_rows(tmp_path, byte_tok, scored):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    cfg = _cfg(path, packing=True, batch_size=1, max_sequences_per_row=4)
    assert cfg.effective_pack_length == 16  # one sequence per example: max_length
    first, second = run(cfg, byte_tok)[0]

    assert first.tokens_BxL.tolist() == [[BOS, *b"Hi", *b"abc", EOS, BOS, *b"Q", *b"xy", EOS, *[PAD] * 4]]
    assert first.segment_ids_BxL.tolist() == [[1] * 7 + [2] * 5 + [0] * 4]
    assert first.segment_example_index_BxS.tolist() == [[0, 1, 0, 0]]
    assert first.reward_E.tolist() == [0.5, -2.0, 0.0, 0.0]
    assert first.example_valid_E.tolist() == [1, 1, 0, 0]
    assert second.reward_E.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert second.example_valid_E.tolist() == [1, 0, 0, 0]


def test_the_largest_batch_is_full_length(tmp_path, byte_tok, scored):
    batch = largest_batch(_cfg(write_jsonl(tmp_path / "d.jsonl", RECORDS)), 3)

    assert type(batch) is scored.ScoredBatch
    assert batch.tokens_BxL.shape == (3, 16) and (batch.segment_ids_BxL == 1).all()
    assert batch.loss_mask_BxL.tolist() == [[0] * 8 + [1] * 8] * 3  # half prompt, half response
    assert batch.example_valid_E.tolist() == [1, 1, 1] and batch.reward_E.tolist() == [0.0] * 3


def test_the_data_check_counts_what_the_pipeline_meets(tmp_path, byte_tok, scored):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    summary = check_data(_cfg(path), byte_tok, progress=False)

    assert (summary.records, summary.n_examples) == (5, 3)
    assert summary.bad == {"missing_field": 1, "wrong_type": 1} and summary.dropped == {}
    assert summary.examples["missing_field"] == [[f"{path}:3", "'reward' must be a finite number, got None"]]
    assert summary.examples["wrong_type"] == [[f"{path}:5", "'reward' must be a finite number, got True"]]
    assert summary.length_histogram == [[8, 2], [16, 1]]  # 7 and 5 tokens; 16 (cut)
    assert summary.truncated == 1
    # Batches [7, 5] in bucket 8 and [16, padding] in bucket 16: 28 real tokens of 48 slots.
    assert summary.efficiency == pytest.approx(28 / 48)
    _, pipeline = run(_cfg(path), byte_tok)
    assert 1.0 - pipeline.metrics()["data/padding_fraction"] == pytest.approx(summary.efficiency)


def test_a_registered_name_cannot_be_taken_twice(scored):
    assert registry.registered() == (*BUILT_IN.split(", "), "scored")
    with pytest.raises(ValueError, match="a record type named 'scored' is registered already"):
        registry.register(scored.RECORD_TYPE)
