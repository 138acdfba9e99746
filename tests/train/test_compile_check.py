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


def _check(tmp_path, batch_size, extra=(), loss=None, data=None):
    tree = {
        "run_dir": str(tmp_path / "run"),
        "model": MODEL,
        "data": {"train": "unused.jsonl", "max_length": 1024, "max_prompt_length": 512, **(data or {})},
        "loss": loss or {"type": "sigmoid", "beta": 0.1},
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


@pytest.mark.slow
def test_an_online_stage_reports_its_sampling_programs_and_fails_when_the_kv_cache_cannot_fit(tmp_path):
    """MO-ODPO's step fits, but 64 samples of 32768 new tokens for each of 4 prompts need a
    16 GiB KV cache per chip: prefill and decode do not fit, so the stage does not."""
    # Prompts bucketed to 16; the last token is never cached; on TPU the cache is laid out in
    # pages of 64 slots for the decode kernel (alignjax/models/paged_cache.py).
    rows, slots = 4 * 64, -(-(16 + 32768 - 1) // 64) * 64
    mo_odpo = {
        "rewards": [{"name": "length", "unit": "chars"}, {"name": "keyword_count", "keywords": ["ok"]}],
        "num_samples": 64,
        "max_new_tokens": 32768,
    }
    rc, out = _check(
        tmp_path,
        batch_size=4,
        loss={"type": "mo_odpo", "beta": 0.1, "mo_odpo": mo_odpo},
        data={"max_length": 64, "max_prompt_length": 16, "templates": {"weights": "w {length} {keyword}"}},
    )
    assert rc == 1, out
    assert re.search(r"^  total .*: fits$", out, re.M), out  # the training step alone fits
    assert "sampling: 256 rows (4 prompts x 64 samples), 64 per chip, prompts of 16 + 32768 new tokens" in out
    # Keys and values of 2 layers x 8 heads x 128 dims in bfloat16, plus an int32 length a
    # row, for a quarter of the rows on each of the 4 chips.
    per_slot = 2 * 2 * 8 * 128 * 2
    expected = rows / 4 * (slots * per_slot + 4) / 2**30
    for program in ("prefill", "decode"):
        kv = float(re.search(rf"^  {program}\s+parameters .*, KV cache ([0-9.]+) GiB", out, re.M).group(1))
        assert kv == pytest.approx(expected, abs=0.01)
        assert re.search(rf"^  {program}\s+total .*DOES NOT FIT", out, re.M), out
