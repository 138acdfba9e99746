"""Length handling: prompt keeps its end (or start), responses keep their start, and
rows with no response left are dropped and counted. Byte tokenizer: id == byte."""

from datatest_helpers import one_batch, row, run, write_jsonl

from alignjax.data.config import DataConfig

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
