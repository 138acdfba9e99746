"""Length handling: prompt keeps its end (or start), responses keep their start, and
rows with no response left are dropped and counted; under `data.over_length: drop` a
record that a limit would cut is dropped and counted instead. Byte tokenizer: id == byte."""

import dataclasses
import json

import pytest
from datatest_helpers import one_batch, row, run, write_jsonl

from alignjax.data.check import check_data
from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.data.records import DataError, split_record_key

BOS, EOS = 257, 258


def b(s):
    return list(s.encode())


def test_prompt_keep_end_keeps_bos(tmp_path, byte_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "abcdefgh", "chosen": "X", "rejected": "x"}])
    out = one_batch(path, byte_tok, max_length=16, max_prompt_length=5, buckets=[16])
    assert row(out, 0) == ([BOS] + b("efgh") + b("X") + [EOS], [0] * 5 + [1, 1])


def test_prompt_keep_start(tmp_path, byte_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "abcdefgh", "chosen": "X", "rejected": "x"}])
    out = one_batch(
        path,
        byte_tok,
        max_length=16,
        max_prompt_length=5,
        buckets=[16],
        truncation_mode="keep_start",
    )
    assert row(out, 0) == ([BOS] + b("abcd") + b("X") + [EOS], [0] * 5 + [1, 1])


def test_response_keeps_its_start_and_loses_eos(tmp_path, byte_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "abcdefgh", "chosen": "XYZ", "rejected": "xy"}])
    out = one_batch(path, byte_tok, max_length=7, max_prompt_length=5, buckets=[8])
    assert row(out, 0) == ([BOS] + b("efgh") + b("XY"), [0] * 5 + [1, 1])
    assert row(out, 1) == ([BOS] + b("efgh") + b("xy"), [0] * 5 + [1, 1])


def test_user_slots_survive_prompt_truncation(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "abcdefgh", "chosen": "X", "rejected": "x", "user_id": "u"}],
    )
    out = one_batch(path, byte_tok, max_length=16, max_prompt_length=5, buckets=[16], n_user_tokens=2)
    assert row(out, 0) == ([BOS, 256, 256] + b("gh") + b("X") + [EOS], [0] * 5 + [1, 1])
    assert out.user_slot_mask_BxL[0, :7].tolist() == [0, 1, 1, 0, 0, 0, 0]


def test_rows_without_response_are_dropped_and_counted(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "abcdefgh", "chosen": "X", "rejected": "x"},  # 9 prompt tokens > max_length
            {"prompt": "a", "chosen": "abX", "rejected": "abY"},  # kept: all 4 response tokens fit
            {
                "prompt": "abcde",
                "chosen": "XYq",
                "rejected": "XYr",
            },  # 6 prompt tokens, 2 left: "XY" == "XY"
            {"prompt": "a", "chosen": "X", "rejected": "x"},  # kept
        ],
    )
    cfg = DataConfig(
        sources=[{"path": path}],
        max_length=8,
        max_prompt_length=None,
        buckets=[8],
        batch_size=4,
        shuffle=False,
        on_bad_record="error",
    )
    batches, p = run(cfg, byte_tok)
    assert [int(x.pair_valid_P.sum()) for x in batches] == [2]
    assert p.skipped_counts() == {"identical_after_truncation": 1, "response_truncated": 1}
    m = p.metrics()
    assert m["data/skipped/response_truncated"] == 1 and m["data/examples"] == 2


# Byte tokenizer lengths: prompt "abcdefgh" is 9 tokens (BOS), over max_prompt_length 4;
# prompt "a" + chosen "XYZ" is 2 + 4 tokens (EOS), over max_length 5; "ab" + "X" is 3 + 2.
OVER_LONG = [
    {"prompt": "abcdefgh", "chosen": "X", "rejected": "x"},
    {"prompt": "a", "chosen": "XYZ", "rejected": "xy"},
    {"prompt": "ab", "chosen": "X", "rejected": "x"},
]


def _over_long_cfg(path, **kw):
    return DataConfig(
        sources=[{"path": path}],
        max_length=5,
        max_prompt_length=4,
        buckets=[8],
        batch_size=4,
        shuffle=False,
        **kw,
    )


@pytest.mark.parametrize("over_length", ["truncate", "auto"])
def test_truncate_cuts_over_long_pairs(tmp_path, byte_tok, over_length):
    """`auto` outside training (no method to choose) truncates, as TRL's DPOTrainer does."""
    path = write_jsonl(tmp_path / "d.jsonl", OVER_LONG)
    [out], p = run(_over_long_cfg(path, over_length=over_length), byte_tok)
    assert out.pair_valid_P.tolist() == [1, 1, 1, 0]
    assert [row(out, r)[0] for r in (0, 1, 2)] == [
        [BOS] + b("fgh") + b("X"),  # prompt keeps BOS and its end; the response loses EOS
        [BOS] + b("a") + b("XYZ"),
        [BOS] + b("ab") + b("X") + [EOS],
    ]
    assert row(out, 4 + 1)[0] == [BOS] + b("a") + b("xy") + [EOS]  # the rejected fits whole
    assert p.skipped_counts() == {}


def test_drop_drops_over_long_pairs_and_counts_them(tmp_path, byte_tok):
    path = write_jsonl(tmp_path / "d.jsonl", OVER_LONG)
    [out], p = run(_over_long_cfg(path, over_length="drop"), byte_tok)
    assert out.pair_valid_P.tolist() == [1, 0, 0, 0]
    assert row(out, 0)[0] == [BOS] + b("ab") + b("X") + [EOS]
    assert row(out, 4)[0] == [BOS] + b("ab") + b("x") + [EOS]
    assert p.skipped_counts() == {"over_length": 2}
    assert p.skipped_examples() == {"over_length": [f"{path}:1"]}  # the first of each reason
    assert p.metrics()["data/skipped/over_length"] == 2


def test_a_repeating_pipeline_with_every_record_dropped_stops_with_an_error(tmp_path, byte_tok):
    """With the data check off, nothing else would stop it: it would read epoch after epoch."""
    path = write_jsonl(tmp_path / "d.jsonl", OVER_LONG[:2])
    cfg = dataclasses.replace(_over_long_cfg(path, over_length="drop"), num_epochs=None)
    with make_pipeline(cfg, byte_tok) as pipeline:
        with pytest.raises(
            DataError,
            match=rf"every record of an epoch was skipped or dropped \(over_length; e\.g\. {path}:1\)",
        ):
            next(pipeline)


def test_the_data_check_counts_over_long_drops_and_truncations(tmp_path, byte_tok):
    path = write_jsonl(tmp_path / "d.jsonl", OVER_LONG)
    dropped = check_data(_over_long_cfg(path, over_length="drop"), byte_tok, progress=False)
    assert dropped.dropped == {"over_length": 2} and dropped.bad == {}
    assert [origin for origin, _ in dropped.examples["over_length"]] == [f"{path}:1", f"{path}:2"]
    assert "data.over_length" in dropped.examples["over_length"][0][1]  # what to change
    [source] = dropped.sources
    assert (source.records, source.examples, source.dropped) == (3, 1, 2)
    assert dropped.truncated == 0
    truncated = check_data(_over_long_cfg(path, over_length="truncate"), byte_tok, progress=False)
    assert truncated.dropped == {} and truncated.n_examples == 3 and truncated.truncated == 2


def test_dropped_records_are_read_once_across_a_resume_on_another_process_count(tmp_path, byte_tok):
    """Two processes take a batch each and stop; one process resumes: every pair that fits is
    read exactly once, and every over-long one counted exactly once (the counts travel with
    the saved states)."""
    rows = [{"prompt": "q", "chosen": "y" * (i % 6 + 1), "rejected": "n"} for i in range(24)]
    fits = [i for i in range(24) if 2 + (i % 6 + 2) <= 6]  # BOS + "q", then the response + EOS
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(
        sources=[{"path": path}], max_length=6, max_prompt_length=None, batch_size=4, over_length="drop"
    )
    first = [make_pipeline(cfg, byte_tok, process_index=q, process_count=2) for q in range(2)]
    keys = [k for pipeline in first for k in _valid_keys(next(pipeline))]
    states = json.loads(json.dumps([pipeline.get_state() for pipeline in first]))
    for pipeline in first:
        pipeline.close()
    resumed = make_pipeline(cfg, byte_tok, process_index=0, process_count=1)
    resumed.resume_from(states)
    keys += [k for batch in resumed for k in _valid_keys(batch)]
    counts = resumed.skipped_counts()
    resumed.close()
    assert sorted(split_record_key(k)[1] for k in keys) == fits
    assert counts == {"over_length": 24 - len(fits)}


def _valid_keys(batch) -> list[int]:
    return [k for k, valid in zip(batch.record_key_P.tolist(), batch.pair_valid_P) if valid]
