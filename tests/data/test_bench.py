"""The benchmark runs end to end and its counts add up (timing is never asserted)."""

from alignjax.data.bench import run_data_benchmark


def test_run_data_benchmark_reports_throughput():
    result = run_data_benchmark(n_records=40, batch_size=8, max_length=256)
    assert result["examples"] == 40 and result["skipped"] == 0
    assert result["batches"] == 5
    assert result["examples_per_s"] > 0 and result["tokens_per_s"] > 0
    assert 0 <= result["padding_fraction"] < 1
