"""`alignjax bench train`'s FLOPs by term and MFU, from its own functions (timing is never
asserted; the training run itself is `alignjax bench train`'s, not a test's)."""

import argparse
import json

import jax
import pytest

from alignjax.commands import bench
from alignjax.commands.bench_train import flops_terms, train_report
from alignjax.train.config import load_config

QUICKSTART_DPO = ["stages=null", "data.eval=null"]  # the quickstart's DPO stage alone


def test_flops_terms_count_the_reference_forward_only_where_the_step_runs_it():
    terms = flops_terms(load_config("configs/quickstart.yaml", QUICKSTART_DPO))
    n = terms["matmul_params"]
    per_token = terms["per_token"]
    assert (terms["rows"], terms["length"], terms["micro_batches"]) == (32, 224, 1)  # 16 pairs
    assert terms["reference_forward"] is True
    assert (per_token["policy"], per_token["reference"]) == (6 * n, 2 * n)
    assert per_token["total"] == per_token["policy"] + per_token["reference"] + per_token["attention"]
    assert terms["per_step"]["total"] == per_token["total"] * 32 * 224
    precomputed = flops_terms(
        load_config("configs/quickstart.yaml", [*QUICKSTART_DPO, "loss.reference=precomputed"])
    )
    assert precomputed["reference_forward"] is False and precomputed["per_token"]["reference"] == 0
    assert precomputed["per_token"]["attention"] * 4 == per_token["attention"] * 3  # no reference pass


def test_mfu_from_a_given_peak():
    records = [
        {"step_time_s": 9.0},
        {"model_flops_per_step": 1.5e12, "step_time_s": 1.0, "tokens_per_sec": 10.0},
    ]
    report = train_report("c.yaml", 2, records, 30.0, {}, peak_tflops=2.0)
    # 1.5e12 FLOPs per second over 2 TFLOP/s per chip.
    assert report["mfu"] == pytest.approx(0.75 / jax.device_count())
    assert (report["peak_tflops_per_chip"], report["peak_source"]) == (2.0, "--peak-tflops")
    assert report["model_flops_per_step"] == 1.5e12 and report["step_time_s"] == 1.0
    unknown = train_report("c.yaml", 2, records, 30.0, {}, peak_tflops=None)
    assert unknown["mfu"] is None and unknown["peak_source"] is None  # a CPU has no table entry


def test_json_flag_writes_the_printed_object(tmp_path, capsys):
    path = tmp_path / "bench.json"
    args = argparse.Namespace(fn=lambda a: {"mfu": 0.5, "tokens_per_sec": 10.0}, json=str(path))
    assert bench._print_report(args) == 0
    assert (
        json.loads(path.read_text())
        == json.loads(capsys.readouterr().out)
        == {"mfu": 0.5, "tokens_per_sec": 10.0}
    )
