"""`check_data` reads every record through the pipeline's own processing and reports what
training will meet. Its numbers are checked against the pipeline itself (the same counts,
the same error text, the same padding fraction) and against lengths computed by hand: the
byte tokenizer makes a plain-text prompt of n bytes n + 1 tokens (BOS) and a response of
n bytes n + 1 tokens (EOS).
"""

import json
import os

import pytest
from datatest_helpers import FIXTURES, run, write_jsonl

from alignjax.data import check
from alignjax.data.byte_tokenizer import CHAT_TEMPLATE
from alignjax.data.check import CheckSummary, check_data
from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.data.records import DataError, DataSetupError

BAD = os.path.join(FIXTURES, "bad_records.jsonl")
# fixtures/bad_records.jsonl: one record of each bad kind, by line (see test_bad_records.py).
BAD_LINES = {
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
}
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('this model has no system role') }}{% endif %}{% endfor %}" + CHAT_TEMPLATE
)


def _bad_records_cfg(on_bad_record, **kw):
    return DataConfig(
        sources=[{"path": BAD}],
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


def test_every_bad_record_is_counted_with_its_line_as_the_pipeline_counts_it(byte_tok):
    summary = check_data(_bad_records_cfg("error"), byte_tok, progress=False)

    assert summary.bad == {reason: 1 for reason in sorted(BAD_LINES)}
    assert summary.dropped == {"response_truncated": 1}  # line 13: a 41-token prompt, max_length 32
    for reason, line in {**BAD_LINES, "response_truncated": 13}.items():
        [[origin, detail]] = summary.examples[reason]
        assert origin == f"{BAD}:{line}" and detail, (reason, origin, detail)
    assert summary.examples["not_an_object"][0][1] == "got a JSON list, not an object"
    [source] = summary.sources
    assert (source.source, source.records, source.examples, source.bad, source.dropped) == (BAD, 14, 2, 11, 1)
    # Lines 1 and 15: "Hi" -> "Yo" / "No" and "Bye" -> "Ok" / "No": 3 + 3 and 4 + 3 tokens per sequence.
    assert summary.length_histogram == [[8, 4]]
    assert summary.truncated == 0

    # Skipping, the pipeline counts exactly these reasons.
    _, pipeline = run(_bad_records_cfg("skip"), byte_tok)
    assert pipeline.skipped_counts() == summary.reasons
    # Under error, the pipeline stops at the first bad record with the error the check reports.
    assert summary.stops_run("error") and not summary.stops_run("skip")
    stream = make_pipeline(_bad_records_cfg("error"), byte_tok, process_index=0, process_count=1)
    with pytest.raises(DataError) as err:
        list(stream)
    assert str(summary.first_error()) == str(err.value)
    assert str(err.value).startswith(f"{BAD}:2: invalid_json: ")


def test_at_most_three_examples_per_reason_in_file_order(tmp_path, byte_tok):
    lines = [b'{"prompt": "Hi", "chosen": "Yo", "rejected": "No"}'] + [b"[%d]" % i for i in range(5)]
    path = tmp_path / "lists.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = DataConfig(sources=[{"path": str(path)}], max_length=32, max_prompt_length=None, buckets=[32])
    summary = check_data(cfg, byte_tok, progress=False)
    assert summary.bad == {"not_an_object": 5}
    assert [o for o, _ in summary.examples["not_an_object"]] == [f"{path}:{n}" for n in (2, 3, 4)]
    assert summary.first_bad[:2] == [f"{path}:2", "not_an_object"]


# (prompt bytes, chosen bytes, rejected bytes) under max_length 32, max_prompt_length 16.
HAND_ROWS = [
    (3, 2, 4),  # 4 + 3 = 7, 4 + 5 = 9
    (15, 5, 5),  # a 16-token prompt: exactly max_prompt_length, so not cut; 22, 22
    (20, 3, 3),  # a 21-token prompt keeps its last 16: truncated; 20, 20
    (5, 30, 2),  # chosen needs 6 + 31 = 37 > 32: cut to 32, truncated; 9
    (2, 25, 3),  # 3 + 26 = 29, 7
    (5, 25, 3),  # 6 + 26 = 32: exactly max_length, so not cut; 10
]


def _hand_lengths(prompt, chosen, rejected, max_length=32, max_prompt_length=16):
    prompt_tokens = prompt + 1
    kept_prompt = min(prompt_tokens, max_prompt_length)
    budget = max_length - kept_prompt
    lengths = [kept_prompt + min(n + 1, budget) for n in (chosen, rejected)]
    truncated = prompt_tokens > max_prompt_length or max(chosen, rejected) + 1 > budget
    return lengths, truncated


def _power_of_two_at_least(n):
    edge = 1
    while edge < n:
        edge *= 2
    return edge


def test_lengths_truncation_and_padding_efficiency_match_a_hand_count(tmp_path, byte_tok):
    rows = [{"prompt": "q" * a, "chosen": "c" * b, "rejected": "r" * c} for a, b, c in HAND_ROWS]
    path = write_jsonl(tmp_path / "hand.jsonl", rows)
    cfg = DataConfig(
        sources=[{"path": path}],
        max_length=32,
        max_prompt_length=16,
        buckets=[16, 32],
        batch_size=2,
        shuffle=False,
    )
    summary = check_data(cfg, byte_tok, progress=False)

    hand = [_hand_lengths(*r) for r in HAND_ROWS]
    assert [lengths for lengths, _ in hand] == [[7, 9], [22, 22], [20, 20], [32, 9], [29, 7], [32, 10]]
    assert summary.truncated == sum(t for _, t in hand) == 2
    histogram = {}
    for lengths, _ in hand:
        for n in lengths:
            edge = _power_of_two_at_least(n)
            histogram[edge] = histogram.get(edge, 0) + 1
    assert (
        summary.length_histogram == sorted([e, n] for e, n in histogram.items()) == [[8, 2], [16, 3], [32, 7]]
    )
    # File order, two pairs (four rows) a batch, each padded to the smallest bucket that fits its longest.
    real = slots = 0
    for i in range(0, len(hand), 2):
        batch = [n for lengths, _ in hand[i : i + 2] for n in lengths]
        real += sum(batch)
        slots += 4 * min(b for b in (16, 32) if b >= max(batch))
    assert (real, slots) == (219, 384)
    assert summary.efficiency == pytest.approx(real / slots)
    assert summary.efficiency_of == "padding" and summary.efficiency_examples == 6


def test_packing_efficiency_matches_a_hand_count(tmp_path, byte_tok):
    # SFT sequences of 20, 20, 10, 10 tokens first-fit into two rows of 32: 20+10, 20+10.
    rows = [{"prompt": "p" * n, "response": "r" * n} for n in (9, 9, 4, 4)]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    cfg = DataConfig(
        sources=[{"path": path}],
        record_type="sft",
        packing=True,
        max_length=32,
        max_prompt_length=16,
        batch_size=2,
        shuffle=False,
    )
    summary = check_data(cfg, byte_tok, progress=False)
    assert summary.efficiency_of == "packing"
    assert summary.efficiency == pytest.approx(60 / 64)


def _write_kinds(tmp_path):
    """Records for each record type, of varied lengths."""
    words = ["Hi", "Hello there", "How are you", "Be brief and kind to Alice", "Bye"]
    pref, sft, cut, prompt = [], [], [], []
    for i in range(23):
        p, c, r = words[i % 5] * (1 + i % 3), words[(i + 1) % 5] * (1 + i % 4), words[(i + 2) % 5]
        pref.append({"prompt": p, "chosen": c, "rejected": r + "!"})
        sft.append({"prompt": p, "response": c})
        judgment = None if i % 3 else "Too rude"
        cut.append({"prompt": p, "response": c, "judgment": judgment, "score": float(i % 5)})
        prompt.append({"prompt": p})
    return {
        kind: write_jsonl(tmp_path / f"{kind}.jsonl", rows)
        for kind, rows in {"preference": pref, "sft": sft, "cut": cut, "prompt": prompt}.items()
    }


@pytest.mark.parametrize(
    "record_type, packing",
    [
        ("preference", False),
        ("preference", True),
        ("sft", False),
        ("sft", True),
        ("cut", False),
        ("prompt", False),
    ],
)
def test_efficiency_is_what_the_pipeline_measures_unshuffled(tmp_path, byte_tok, record_type, packing):
    path = _write_kinds(tmp_path)[record_type]
    cfg = DataConfig(
        sources=[{"path": path}],
        record_type=record_type,
        packing=packing,
        max_length=48,
        max_prompt_length=24,
        buckets=None if packing else [16, 32, 48],
        batch_size=3,
        shuffle=False,
    )
    summary = check_data(cfg, byte_tok, progress=False)
    _, pipeline = run(cfg, byte_tok)
    metrics = pipeline.metrics()
    assert summary.n_examples == metrics["data/examples"] == 23
    assert summary.efficiency == pytest.approx(1.0 - metrics["data/padding_fraction"], abs=1e-12)


def test_worker_processes_find_the_same(tmp_path, byte_tok, monkeypatch):
    monkeypatch.setattr(check, "EFFICIENCY_SAMPLE", 100)  # a random subset measures the efficiency
    rows = [{"prompt": "q" * (i % 30), "chosen": "c" * (1 + i % 17), "rejected": "r"} for i in range(1300)]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    with open(path, "a") as f:
        f.write("not json\n")
    cfg = DataConfig(sources=[{"path": path}], max_length=24, max_prompt_length=12, batch_size=4, seed=3)
    here = check_data(cfg, byte_tok, workers=0, progress=False).to_json()
    pooled = check_data(cfg, byte_tok, workers=2, progress=False).to_json()
    here.pop("seconds"), pooled.pop("seconds")
    assert pooled == here
    assert here["reasons"] == {"invalid_json": 1}
    assert here["examples"]["invalid_json"][0][0] == f"{path}:1301"
    assert here["efficiency_examples"] == 100


def test_unshuffled_efficiency_is_measured_on_the_first_records(tmp_path, byte_tok, monkeypatch):
    rows = [{"prompt": "q" * (i % 23), "chosen": "c" * (1 + i % 19), "rejected": "r"} for i in range(300)]
    common = {"max_length": 40, "max_prompt_length": 20, "buckets": [8, 16, 24, 32, 40], "shuffle": False}
    everything = DataConfig(sources=[{"path": write_jsonl(tmp_path / "all.jsonl", rows)}], **common)
    first = DataConfig(sources=[{"path": write_jsonl(tmp_path / "first.jsonl", rows[:64])}], **common)
    monkeypatch.setattr(check, "EFFICIENCY_SAMPLE", 64)
    sampled = check_data(everything, byte_tok, progress=False)
    assert sampled.n_examples == 300 and sampled.efficiency_examples == 64
    assert sampled.efficiency == check_data(first, byte_tok, progress=False).efficiency


def test_a_template_that_does_not_compile_stops_the_check(tmp_path, byte_tok):
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": conversation}] * 3)
    cfg = DataConfig(
        sources=[{"path": path}],
        record_type="sft",
        on_bad_record="skip",
        max_length=64,
        max_prompt_length=None,
        chat_template="{% for m in messages %}{{ m['content'] }",
    )
    with pytest.raises(DataSetupError, match=rf"does not compile .*\(met first at {path}:1\)"):
        check_data(cfg, byte_tok, progress=False)


def test_summary_round_trips_through_json(byte_tok):
    summary = check_data(_bad_records_cfg("skip"), byte_tok, progress=False)
    assert CheckSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary


def test_check_key_is_validated():
    with pytest.raises(ValueError, match=r"^data\.check: "):
        DataConfig(sources=[{"path": BAD}], check="yes").validate()
