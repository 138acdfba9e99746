"""KTO's unpaired records: validation naming file:line, and the batch's mismatched (KL) rows."""

import pytest
from datatest_helpers import one_batch, row, write_jsonl

from alignjax.data.records import DataError

BOS, EOS, PAD = 257, 258, 256


def test_each_prompt_gets_the_previous_completion_in_its_kl_row(tmp_path, byte_tok):
    records = [
        {"prompt": "Q1", "completion": "abcdefghij", "label": True},
        {"prompt": "Q2", "completion": "k", "label": False},
        {"prompt": "Q3", "completion": "mn", "label": True},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    # 4 slots for 3 records: one unused. max_length 10 cuts example 0's own completion and,
    # in the KL rows, example 1's copy of it (to that prompt's budget, as TRL cuts).
    b = one_batch(path, byte_tok, record_type="unpaired", batch_size=4, max_length=10, max_prompt_length=5)
    E = 4
    assert b.tokens_BxL.shape[0] == 2 * E
    own = [[BOS, *b"Q1abcdefg"], [BOS, *b"Q2k", EOS], [BOS, *b"Q3mn", EOS]]
    # (x_i, y_{i-1}), and x_0 takes the last valid example's completion (not the unused slot's).
    kl = [[BOS, *b"Q1mn", EOS], [BOS, *b"Q2abcdefg"], [BOS, *b"Q3k", EOS]]
    for i in range(3):
        tokens, mask = row(b, i)
        assert tokens == own[i]
        assert mask == [0, 0, 0] + [1] * (len(own[i]) - 3)
        tokens, mask = row(b, E + i)
        assert tokens == kl[i]
        assert mask == [0, 0, 0] + [1] * (len(kl[i]) - 3)
    assert row(b, 3) == ([], []) and row(b, E + 3) == ([], [])
    assert (b.tokens_BxL[b.segment_ids_BxL == 0] == PAD).all()
    assert b.desirable_E.tolist() == [1, 0, 1, 0]
    assert b.example_valid_E.tolist() == [1, 1, 1, 0]


def test_conversational_records_render_with_the_chat_template(tmp_path, byte_tok):
    records = [
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "yo"}], "label": True},
        {"prompt": "Hey", "completion": [{"role": "assistant", "content": "no"}], "label": False},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", records)
    b = one_batch(path, byte_tok, record_type="unpaired", batch_size=2, max_length=128, max_prompt_length=64)
    first, first_mask = row(b, 0)
    second, second_mask = row(b, 1)
    second_kl, second_kl_mask = row(b, 3)
    completion_of_first = [t for t, m in zip(first, first_mask) if m]
    assert bytes(completion_of_first[:2]) == b"yo"
    assert b"Hey" in bytes(t for t in second if t < 256)  # a plain prompt became a user message
    # Example 1's KL row: its own rendered prompt, then example 0's completion.
    prompt_of = lambda tokens, mask: [t for t, m in zip(tokens, mask) if not m]  # noqa: E731
    assert prompt_of(second_kl, second_kl_mask) == prompt_of(second, second_mask)
    assert [t for t, m in zip(second_kl, second_kl_mask) if m] == completion_of_first


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"prompt": "Q", "completion": "a", "label": 1}, "wrong_type: 'label' must be true"),
        ({"prompt": "Q", "completion": "a"}, "missing_field: 'label' must be true"),
        ({"prompt": "Q", "label": True}, "missing_field: field 'completion' is missing"),
        ({"prompt": "Q", "completion": "", "label": False}, "empty_response"),
    ],
)
def test_a_bad_record_is_named_by_file_and_line(tmp_path, byte_tok, bad, reason):
    good = {"prompt": "Q", "completion": "a", "label": True}
    path = write_jsonl(tmp_path / "d.jsonl", [good, bad, good])
    with pytest.raises(DataError, match=f"d.jsonl:2: {reason}"):
        one_batch(path, byte_tok, record_type="unpaired", batch_size=3, max_length=32, max_prompt_length=16)
