"""The mixed-length generation benchmark decodes what it says (timing is never asserted)."""

import pytest

from alignjax.generation.bench_mixed import _choose_rows, run_mixed_generate_benchmark


def test_short_rows_stop_at_their_own_token_and_long_rows_meet_no_stop_id():
    probe = [
        [5, 6, 7, 8],  # short: stops at 7
        [7, 6, 9, 9],  # meets 7 before its third token: neither kind
        [1, 2, 3, 4],  # short: stops at 3
        [1, 2, 9, 4],  # long: meets neither 7 nor 3
        [9, 9, 9, 3],  # meets 3 late: not long
        [4, 4, 4, 4],  # long
    ]
    short_rows, long_rows, stops = _choose_rows(probe, n=2, short=3)
    assert short_rows == [0, 2] and long_rows == [3, 5] and stops == {7, 3}
    with pytest.raises(ValueError, match="another --seed"):
        _choose_rows(probe, n=3, short=3)


@pytest.mark.slow
def test_both_sides_decode_the_same_mixed_lengths():
    result = run_mixed_generate_benchmark(
        vocab_size=4000, batch_size=4, prompt_len=8, short=3, long=12, repeats=1
    )
    assert result["alignjax_lengths"] == result["transformers_lengths"] == [3, 12]
    assert result["same_tokens"]
    assert result["alignjax_tokens_per_s"] > 0 and result["transformers_tokens_per_s"] > 0
