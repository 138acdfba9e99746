"""`alignjax compile-check` compiles a config's steps for a TPU topology from this CPU host
(libtpu describes the chips; nothing runs on them) and says whether each stage fits."""

import re
import subprocess
import sys

import pytest
import train_helpers as th
import yaml

pytest.importorskip("libtpu", reason="compile-check for TPU topologies needs jax[tpu] (the test extra)")

# Two Llama-3-8B-wide layers (its 128k vocabulary included) on a 2x2 v5e slice: 16 GiB a chip.
MODEL = {
    "preset": "llama3-8b",
    "preset_overrides": {"num_hidden_layers": 2},
    "dtype": "bfloat16",
    "scan_layers": True,
    "remat_policy": "minimal",
}


def _check(tmp_path, batch_size, extra=()):
    tree = {
        "run_dir": str(tmp_path / "run"),
        "model": MODEL,
        "data": {"train": "unused.jsonl", "max_length": 1024, "max_prompt_length": 512},
        "loss": {"type": "sigmoid", "beta": 0.1},
        "train": {"batch_size": batch_size, "steps": 10},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    out = subprocess.run(
        [sys.executable, "-m", "alignjax.cli", "compile-check", str(path), "--topology", "v5e:2x2", *extra],
        cwd=th.REPO,
        env=th.train_env(1, None),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out.returncode, out.stdout


def _gib(stdout, what):
    return float(re.search(rf"^  {what}\s+([0-9.]+) GiB", stdout, re.M).group(1))


@pytest.mark.slow
def test_a_batch_that_fits_and_one_that_does_not(tmp_path):
    rc, out = _check(tmp_path, batch_size=4)  # 8 rows of 1024 tokens: 2 per chip
    assert rc == 0, out
    assert "4 x v5e, 2 rows (2,048 tokens) per chip" in out and "of 16.00 GiB" in out and ": fits" in out
    # Two 218M-parameter layers, embedding and lm_head (128256 x 4096 each), float32 over 4
    # chips; Adam's two moments twice that; the reference in bfloat16 half of it.
    params, opt, ref = _gib(out, "parameters"), _gib(out, "optimizer"), _gib(out, "reference")
    n_params = 2 * 218_112_000 + 2 * 128_256 * 4096 + 4096
    assert params == pytest.approx(n_params * 4 / 4 / 2**30, rel=0.01)
    assert opt == pytest.approx(2 * params, rel=0.01)
    assert ref == pytest.approx(params / 2, rel=0.01)  # bfloat16, the compute dtype

    rc, out = _check(
        tmp_path, batch_size=256, extra=("model.remat_policy=none",)
    )  # 128 rows a chip, no remat
    assert rc == 1, out
    # The TPU compiler refuses it outright (its temporaries alone exceed HBM): reported, not raised.
    assert "DOES NOT FIT: Ran out of memory on HBM" in out and _gib(out, "total") > 16.0
