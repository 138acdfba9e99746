"""The data check before step 1, and `alignjax data check`.

Runs are in-process `alignjax train` / `alignjax data check` on a tiny preset model with the
byte tokenizer, where a plain-text prompt of n bytes is n + 1 tokens (BOS) and a response
of n bytes n + 1 tokens (EOS), so every expected number below is counted by hand.
"""

import json
import logging
import os
import re
import types

import jax
import pytest
import train_helpers as th
import yaml

from alignjax import cli
from alignjax.data.config import DataConfig
from alignjax.data.records import DataError
from alignjax.train import data_check
from alignjax.train.config import LossSection
from alignjax.train.datasets import StageData

N_RECORDS = 200
MAX_LENGTH, MAX_PROMPT_LENGTH = 64, 32

# The backend starts here, at collection: a platform plugin's probe (libtpu prints to stderr
# when no TPU is attached) must not land in a test that asserts on stderr line by line.
jax.devices()


def _row(i: int) -> dict:
    a, b, c = 5 + (i * 7) % 40, 3 + (i * 11) % 30, 3 + (i * 13) % 30
    return {"prompt": "q" * a, "chosen": "c" * b, "rejected": "r" * c}


def _write_data(path, bad: dict[int, str]) -> str:
    """N_RECORDS lines; `bad` replaces some (1-based line -> its text)."""
    lines = [bad.get(line) or json.dumps(_row(line - 1)) for line in range(1, N_RECORDS + 1)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def _hand_count(bad_lines):
    """(sequence lengths per kept pair, number truncated), from the byte tokenizer's rule."""
    pairs, truncated = [], 0
    for line in range(1, N_RECORDS + 1):
        if line in bad_lines:
            continue
        r = _row(line - 1)
        prompt = len(r["prompt"]) + 1
        kept_prompt = min(prompt, MAX_PROMPT_LENGTH)  # keep_end keeps BOS and the prompt's end
        budget = MAX_LENGTH - kept_prompt
        responses = [len(r["chosen"]) + 1, len(r["rejected"]) + 1]
        pairs.append([kept_prompt + min(n, budget) for n in responses])
        truncated += prompt > MAX_PROMPT_LENGTH or max(responses) > budget
    return pairs, truncated


def _write_config(tmp_path, data_path: str, **data) -> tuple[str, str]:
    run_dir = str(tmp_path / "run")
    config = {
        "run_dir": run_dir,
        "seed": 0,
        "model": th.tiny_config(run_dir)["model"],
        "data": {
            "train": data_path,
            "max_length": MAX_LENGTH,
            "max_prompt_length": MAX_PROMPT_LENGTH,
            **data,
        },
        "loss": {"type": "sigmoid", "beta": 0.1},
        "optim": {"name": "adamw", "lr": 1.0e-3},
        "train": {"batch_size": 8, "steps": 2, "log_every": 1, "save_every": 2},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    path = str(tmp_path / "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path, run_dir


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch):
    # The commands reconfigure the root logger (force=True), which would drop caplog's handler.
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)


def _logged_steps(run_dir: str) -> list[int]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f]


def test_a_bad_last_line_stops_training_before_step_1(tmp_path, capsys):
    data_path = _write_data(tmp_path / "train.jsonl", {N_RECORDS: '{"prompt": "oops", "chosen": '})
    config, run_dir = _write_config(tmp_path, data_path, shuffle=True)

    assert cli.main(["train", config]) == 2

    err = capsys.readouterr().err
    # Other stderr lines (a library's warning from another thread) are not the command's.
    errors = [line for line in err.splitlines() if line.startswith("alignjax train:")]
    assert len(errors) == 1, err
    [line] = errors
    assert line.startswith(f"alignjax train: error: {data_path}:{N_RECORDS}: invalid_json: "), line
    found = "Found before step 1 by the data check of stage train data.train: 1 of its 200 records are bad"
    assert f"{found} (invalid_json=1)" in line
    assert f"`alignjax data check {config}` lists them" in line
    assert _logged_steps(run_dir) == []
    assert th.finalized_steps(run_dir) == []


def test_data_with_no_record_left_stops_before_step_1(tmp_path, capsys):
    """Every pair over-long under over_length: drop (as reward models have it): the run
    stops naming the keys to change instead of searching the data forever."""
    data_path = _write_data(tmp_path / "train.jsonl", {})
    config, run_dir = _write_config(
        tmp_path, data_path, over_length="drop", max_length=8, max_prompt_length=4
    )

    assert cli.main(["train", config]) == 2

    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("alignjax train:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(
        "alignjax train: error: data check of stage train data.train: none of its 200 records is left "
        f"to train on (over_length=200 (e.g. {data_path}:1, "
    ), errors[0]
    assert "set data.over_length: truncate" in errors[0]
    assert _logged_steps(run_dir) == []


def test_skip_mode_reports_counts_before_step_1_and_a_resume_reuses_the_check(tmp_path, caplog, monkeypatch):
    bad = {57: "not json", 120: json.dumps({"prompt": "q", "chosen": "c"}), N_RECORDS: "[1, 2]"}
    data_path = _write_data(tmp_path / "train.jsonl", bad)
    config, run_dir = _write_config(tmp_path, data_path, shuffle=True, on_bad_record="skip")
    caplog.set_level(logging.INFO)

    assert cli.main(["train", config]) == 0

    messages = [r.getMessage() for r in caplog.records]
    expected = (
        "data check of stage train data.train: 3 of 200 records will be skipped: "
        f"invalid_json=1 (e.g. {data_path}:57), missing_field=1 (e.g. {data_path}:120), "
        f"not_an_object=1 (e.g. {data_path}:200)"
    )
    assert expected in messages
    stage_start = next(i for i, m in enumerate(messages) if m.startswith("stage train: steps 0..2"))
    assert messages.index(expected) < stage_start  # reported before the first step ran
    assert _logged_steps(run_dir) == [1, 2]
    [cached] = os.listdir(os.path.join(run_dir, "data_check"))
    cache_path = os.path.join(run_dir, "data_check", cached)
    written = os.stat(cache_path).st_mtime_ns

    # Resume at step 2 and train one more step: the check must come from the cache.
    def recheck(*args, **kwargs):
        raise AssertionError("the data check ran again on resume")

    monkeypatch.setattr(data_check, "check_data", recheck)
    caplog.clear()
    assert cli.main(["train", config, "train.steps=3"]) == 0

    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("resumed from ") for m in messages)
    reused = (
        f"data check of stage train data.train: reusing {cache_path} "
        "(the data has not changed since it was checked)"
    )
    assert reused in messages and expected in messages
    assert os.stat(cache_path).st_mtime_ns == written
    assert _logged_steps(run_dir) == [1, 2, 3]


def test_data_check_prints_the_summary_and_exits_1_under_error(tmp_path, capsys):
    bad = {
        57: '{"prompt": "oops", "chosen": ',
        120: json.dumps({"prompt": "q", "chosen": "c"}),
        N_RECORDS: "nope",
    }
    data_path = _write_data(tmp_path / "train.jsonl", bad)
    # Unshuffled: batches of 8 pairs in file order, each padded to the bucket of its longest sequence.
    config, _ = _write_config(tmp_path, data_path, shuffle=False, buckets=[32, 64])

    assert cli.main(["data", "check", config]) == 1
    out = capsys.readouterr().out

    pairs, truncated = _hand_count(bad)
    assert len(pairs) == 197 and truncated > 0
    assert "stage train data.train: 200 records, 197 examples, 3 bad, 0 dropped by length" in out
    assert f"    {data_path}: 200 records, 197 examples, 3 bad, 0 dropped\n" in out
    assert "    invalid_json: 2 (the line or record is not valid JSON)\n" in out
    assert f"      {data_path}:57: Expecting value at column 30\n" in out
    assert f"      {data_path}:200: Expecting value at column 1\n" in out
    assert "    missing_field: 1 (a required field is missing or null)\n" in out
    assert f"      {data_path}:120: field 'rejected' is missing\n" in out

    histogram = {}
    for n in (n for pair in pairs for n in pair):
        edge = next(2**k for k in range(16) if 2**k >= n)
        histogram[edge] = histogram.get(edge, 0) + 1
    printed = {int(hi): int(n) for _, hi, n in re.findall(r"^ +(\d+)-(\d+) +(\d+)  #*$", out, re.MULTILINE)}
    assert printed == histogram and sum(printed.values()) == 2 * 197

    assert f"truncated: {truncated} of 197 examples ({100 * truncated / 197:.1f}%)" in out
    real = slots = 0
    for i in range(0, len(pairs), 8):
        batch = [n for pair in pairs[i : i + 8] for n in pair]
        real += sum(batch)
        slots += 16 * (32 if max(batch) <= 32 else 64)  # 8 pairs = 16 rows, padding rows included
    assert f"padding efficiency: {100 * real / slots:.1f}% of batch tokens are real" in out
    assert f"data.on_bad_record: error stops training at {data_path}:57" in out

    # Skipping, the same data would train: exit 0, from the summary cached by the first check.
    assert cli.main(["data", "check", config, "data.on_bad_record=skip"]) == 0
    out = capsys.readouterr().out
    assert "(cached)" in out and "stops training" not in out


def test_a_shared_summary_cache_spares_a_new_run_directory_the_check(tmp_path, monkeypatch, caplog):
    shared = tmp_path / "shared"
    monkeypatch.setenv(data_check.SHARED_CACHE_ENV, str(shared))
    data_path = _write_data(tmp_path / "train.jsonl", {9: "[]"})
    config, first_dir = _write_config(tmp_path, data_path, on_bad_record="skip")
    assert cli.main(["train", config]) == 0
    [summary] = os.listdir(shared)
    [first] = os.listdir(os.path.join(first_dir, "data_check"))
    assert first.endswith(summary)  # <stage>-<set>-<fingerprint>.json beside <fingerprint>.json

    def recheck(*args, **kwargs):
        raise AssertionError("the data was checked again")

    monkeypatch.setattr(data_check, "check_data", recheck)
    caplog.set_level(logging.INFO)
    second_dir = str(tmp_path / "second")
    assert cli.main(["train", config, f"run_dir={second_dir}"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert f"data check of stage train data.train: reusing {shared / summary} " in " ".join(messages)
    assert any("1 of 200 records will be skipped: not_an_object=1" in m for m in messages)
    with open(os.path.join(second_dir, "data_check", first)) as f, open(shared / summary) as g:
        assert json.load(f) == json.load(g)  # the new run directory keeps its own copy


def test_data_check_names_a_stage_that_does_not_exist(tmp_path, capsys):
    config, _ = _write_config(tmp_path, _write_data(tmp_path / "train.jsonl", {}))
    assert cli.main(["data", "check", config, "--stage", "dpo"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "alignjax data check: error: --stage dpo: the config's stages are ['train']"
    ]


class _Run:
    def __init__(self, run_dir, tokenizer):
        self.cfg = type("Cfg", (), {"run_dir": run_dir})()
        self.tokenizer = tokenizer


class _Stage:
    name, first_step = "dpo", 8
    config = types.SimpleNamespace(loss=LossSection(type="sigmoid"))


def _stage_data(train_path, eval_path, **train):
    common = {"max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH, "batch_size": 8}
    train_cfg = DataConfig(sources=[{"path": train_path}], **common, **train)
    eval_cfg = DataConfig(sources=[{"path": eval_path}], shuffle=False, **common)
    return StageData(train=train_cfg, evals={"heldout": eval_cfg}, tables=[])


def test_eval_sets_are_checked_too(tmp_path):
    from alignjax.data.byte_tokenizer import make_byte_tokenizer

    train_path = _write_data(tmp_path / "train.jsonl", {})
    eval_path = _write_data(tmp_path / "eval.jsonl", {3: "[]"})
    run = _Run(str(tmp_path / "run"), make_byte_tokenizer())
    with pytest.raises(
        DataError,
        match=rf"^{eval_path}:3: not_an_object: .* Found before step 9 by the data check of stage dpo "
        r"data\.eval\.heldout",
    ):
        data_check.check_stage_data(run, _Stage(), _stage_data(train_path, eval_path))
    assert sorted(n.split("-")[:2] for n in os.listdir(tmp_path / "run" / "data_check")) == [
        ["dpo", "eval.heldout"],
        ["dpo", "train"],
    ]


def test_data_check_false_reads_nothing(tmp_path, monkeypatch):
    from alignjax.data.byte_tokenizer import make_byte_tokenizer

    def recheck(*args, **kwargs):
        raise AssertionError("data.check: false still checked")

    monkeypatch.setattr(data_check, "check_data", recheck)
    path = _write_data(tmp_path / "train.jsonl", {1: "nope"})
    run = _Run(str(tmp_path / "run"), make_byte_tokenizer())
    data_check.check_stage_data(run, _Stage(), _stage_data(path, path, check=False))
    assert not os.path.exists(tmp_path / "run" / "data_check")


def test_an_online_stage_checks_its_training_data_as_prompts(tmp_path):

    path = str(tmp_path / "prompts.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"prompt": "Hi", "weights": {"a": 1.0}}) + "\n")
    stage = types.SimpleNamespace(name="mo", config=types.SimpleNamespace(loss=LossSection(type="mo_odpo")))
    [(label, train)] = data_check.checked_sets(stage, StageData(DataConfig(sources=[path]), {}, []))
    # Read as the online source reads it; as data.record_type (preference) it would lack chosen/rejected.
    assert (label, train.record_type) == ("data.train", "prompt")
