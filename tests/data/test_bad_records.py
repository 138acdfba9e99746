"""fixtures/bad_records.jsonl holds one record of each bad kind between good ones.

Lines: 1 good, 2 invalid_json, 3 not_utf8, 4 not_an_object, 5 missing_field,
6 wrong_type, 7 empty_response, 8 identical_responses, 9 bad_conversation,
10 bad_weights, 11 bad_token_weights, 12 template_error (system role refused),
13 response_truncated (40-byte prompt, max_length 32), 14 blank (no record), 15 good.
"""

import os

import pytest
from datatest_helpers import FIXTURES, run, write_jsonl

from alignjax.data.byte_tokenizer import CHAT_TEMPLATE
from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.data.records import DataError, DataSetupError

BAD = os.path.join(FIXTURES, "bad_records.jsonl")
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('this model has no system role') }}{% endif %}{% endfor %}" + CHAT_TEMPLATE
)
EXPECTED = {
    "invalid_json": 2,
    "not_utf8": 3,
    "not_an_object": 4,
    "missing_field": 5,
    "wrong_type": 6,
    "empty_response": 7,
    "identical_responses": 8,
    "bad_conversation": 9,
    "bad_weights": 10,
    "bad_token_weights": 11,
    "template_error": 12,
    "response_truncated": 13,
}


def _cfg(path, on_bad_record, **kw):
    return DataConfig(
        sources=[{"path": path}],
        on_bad_record=on_bad_record,
        max_length=32,
        max_prompt_length=None,
        buckets=[32],
        batch_size=2,
        shuffle=False,
        chat_template=NO_SYSTEM_TEMPLATE,
        templates={"weights": "{helpful:.0%} helpful, {harmless:.0%} harmless"},
        **kw,
    )


def test_error_stops_at_the_first_bad_record_naming_file_and_line(byte_tok):
    pipeline = make_pipeline(_cfg(BAD, "error"), byte_tok, process_index=0, process_count=1)
    with pytest.raises(DataError) as err:
        list(pipeline)
    assert str(err.value).startswith(f"{BAD}:2: invalid_json: ")
    assert "data.on_bad_record: skip" in str(err.value)


@pytest.mark.parametrize("reason", [r for r in EXPECTED if r != "response_truncated"])
def test_error_names_each_kind_and_its_line(tmp_path, byte_tok, reason):
    with open(BAD, "rb") as f:
        lines = f.read().split(b"\n")
    path = tmp_path / "one_bad.jsonl"
    path.write_bytes(lines[0] + b"\n" + lines[EXPECTED[reason] - 1] + b"\n")
    pipeline = make_pipeline(_cfg(str(path), "error"), byte_tok, process_index=0, process_count=1)
    with pytest.raises(DataError, match=rf"^{path}:2: {reason}: "):
        list(pipeline)


def test_length_drops_are_counted_even_under_error(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "x" * 40, "chosen": "a", "rejected": "b"},
            {"prompt": "Hi", "chosen": "a", "rejected": "b"},
        ],
    )
    batches, p = run(_cfg(path, "error"), byte_tok)
    assert p.skipped_counts() == {"response_truncated": 1} and len(batches) == 1


def test_skip_counts_every_reason_exactly(byte_tok):
    batches, p = run(_cfg(BAD, "skip", num_epochs=2), byte_tok)
    assert sum(int(x.pair_valid_P.sum()) for x in batches) == 2 * 2  # lines 1 and 15, twice
    assert p.skipped_counts() == {reason: 2 for reason in EXPECTED}
    assert p.skipped_examples() == {r: [f"{BAD}:{line}"] for r, line in EXPECTED.items()}
    metrics = p.metrics()
    for reason in EXPECTED:
        assert metrics[f"data/skipped/{reason}"] == 2
    assert metrics["data/skipped/total"] == 2 * len(EXPECTED)
    assert p.epoch_reports == [
        {"epoch": 0, "skipped": dict(sorted((r, 1) for r in EXPECTED))},
        {"epoch": 1, "skipped": dict(sorted((r, 1) for r in EXPECTED))},
    ]


def test_all_records_bad_still_reports_counts(tmp_path, byte_tok):
    path = tmp_path / "all_bad.jsonl"
    path.write_bytes(b"nope\n[1]\n")
    batches, p = run(_cfg(str(path), "skip"), byte_tok)
    assert batches == [] and p.skipped_counts() == {"invalid_json": 1, "not_an_object": 1}


def test_empty_prompt_without_bos_is_a_bad_record(tmp_path, qwen_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "", "chosen": "good", "rejected": "bad"}])
    cfg = DataConfig(sources=[{"path": path}], max_length=16, max_prompt_length=8, buckets=[16])
    with pytest.raises(DataError, match=r":1: empty_prompt: "):
        run(cfg, qwen_tok)


def _without_jinja(monkeypatch):
    """transformers as it runs where jinja2 is not installed: its own ImportError."""
    from transformers.utils import chat_template_utils

    monkeypatch.setattr(chat_template_utils, "is_jinja_available", lambda: False)
    # Earlier tests may have compiled this template already; exceptions are never cached.
    chat_template_utils._compile_jinja_template.cache_clear()


@pytest.mark.parametrize("on_bad_record", ["error", "skip"])
def test_missing_template_package_stops_in_both_modes(tmp_path, byte_tok, monkeypatch, on_bad_record):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": _CONVERSATION}] * 3)
    _without_jinja(monkeypatch)
    pipeline = make_pipeline(_sft_cfg(path, on_bad_record), byte_tok, process_index=0, process_count=1)
    with pytest.raises(DataSetupError) as err:
        list(pipeline)
    message = str(err.value)
    assert "requires jinja2" in message and "not a problem with the data" in message
    assert f"{path}:1" in message  # where it was met
    assert "on_bad_record" not in message  # skipping cannot help
    assert pipeline.skipped_counts() == {}


@pytest.mark.parametrize("on_bad_record", ["error", "skip"])
def test_template_that_does_not_compile_stops_in_both_modes(tmp_path, byte_tok, on_bad_record):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": _CONVERSATION}] * 3)
    cfg = _sft_cfg(path, on_bad_record, chat_template="{% for m in messages %}{{ m['content'] }")
    pipeline = make_pipeline(cfg, byte_tok, process_index=0, process_count=1)
    with pytest.raises(DataSetupError, match=r"does not compile .*fix data\.chat_template"):
        list(pipeline)
    assert pipeline.skipped_counts() == {}


def test_template_rejecting_one_record_is_still_a_bad_record(tmp_path, byte_tok):
    system = [{"role": "system", "content": "Be brief."}, *_CONVERSATION]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": _CONVERSATION}, {"messages": system}])
    cfg = _sft_cfg(path, "skip", chat_template=NO_SYSTEM_TEMPLATE)
    batches, p = run(cfg, byte_tok)
    assert p.skipped_counts() == {"template_error": 1} and len(batches) == 1


_CONVERSATION = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]


def _sft_cfg(path, on_bad_record, **kw):
    return DataConfig(
        sources=[{"path": path}],
        record_type="sft",
        on_bad_record=on_bad_record,
        max_length=64,
        max_prompt_length=None,
        buckets=[64],
        batch_size=1,
        shuffle=False,
        **kw,
    )


def test_pair_margins_reach_the_batch_and_a_bad_margin_names_its_line(tmp_path, byte_tok):
    """data.margin_field (TRL RewardTrainer's `margin` column) travels as margin_P."""
    good = [
        {"prompt": "Hi", "chosen": "a", "rejected": "b", "margin": 0.5},
        {"prompt": "Yo", "chosen": "c", "rejected": "d", "margin": -2},
    ]
    path = write_jsonl(tmp_path / "m.jsonl", good)
    pipeline = make_pipeline(
        _cfg(path, "error", margin_field="margin"), byte_tok, process_index=0, process_count=1
    )
    (batch,) = list(pipeline)
    assert batch.margin_P.tolist() == [0.5, -2.0]
    without = make_pipeline(_cfg(path, "error"), byte_tok, process_index=0, process_count=1)
    assert next(iter(without)).margin_P is None
    bad = write_jsonl(tmp_path / "bad.jsonl", [good[0], {**good[1], "margin": "high"}])
    pipeline = make_pipeline(
        _cfg(bad, "error", margin_field="margin"), byte_tok, process_index=0, process_count=1
    )
    with pytest.raises(DataError, match=rf"^{bad}:2: bad_margin: margin must be a finite number"):
        list(pipeline)
    with pytest.raises(ValueError, match="data.margin_field: only preference records"):
        DataConfig(sources=[{"path": path}], record_type="sft", margin_field="margin").validate()
