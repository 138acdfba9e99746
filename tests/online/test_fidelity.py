"""`alignjax eval --fidelity`: the tasks hold what their reproductions assume, and the
scores are checked against hand-computed cases."""

import collections
import json

import numpy as np
import pytest

from alignjax.commands import eval as eval_cmd
from alignjax.evaluation import fidelity
from alignjax.evaluation.fidelity import cut, metaalign
from alignjax.evaluation.personalized import accuracy_table
from alignjax.tasks import BUILTIN_TASKS, judged_facts, user_length
from alignjax.tasks.conditioned_style import _answer, split_topics


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_user_length_labels_cancel_without_the_user(tmp_path):
    paths = BUILTIN_TASKS["user_length"](str(tmp_path), n_train=50, n_eval=10)
    train = _read(paths["pdpo"])
    assert len(train) == 100
    for long_rec, short_rec in zip(train[1::2], train[::2]):
        # the same pair, once chosen by a short-preferring and once by a long-preferring user
        assert user_length.USERS[short_rec["user_id"]] == "short"
        assert user_length.USERS[long_rec["user_id"]] == "long"
        assert (short_rec["chosen"], short_rec["rejected"]) == (long_rec["rejected"], long_rec["chosen"])
        assert len(long_rec["chosen"].split()) > len(long_rec["rejected"].split())
        assert "long" not in short_rec["prompt"] and "short" not in short_rec["prompt"]
    heldout, _ = split_topics(0)
    prompts = [r["prompt"] for r in _read(paths["eval_prompts"])]
    assert prompts == [f"Tell me about the {t}." for t in heldout]
    assert not {r["prompt"] for r in train} & set(prompts)
    assert {r["response"] for r in _read(paths["sft"])} == {r["chosen"] for r in train}


def test_judged_facts_spans(tmp_path):
    paths = BUILTIN_TASKS["judged_facts"](str(tmp_path), n_train=2000, n_eval=20)
    train = _read(paths["cut"])
    facts = _read(paths["fact_prompts"])
    truth = {r["topic"]: r["truth"] for r in facts}
    wrong = [r for r in train if r["judgment"] is not None]
    assert len(wrong) / len(train) == pytest.approx(judged_facts.WRONG_SHARE, abs=0.03)
    said = collections.defaultdict(collections.Counter)
    for r in train:
        digit = r["response"][-2]
        assert (digit == truth[r["topic"]]) == (r["judgment"] is None)
        said[r["topic"]][digit] += 1
    assert np.mean([len(digits) for digits in said.values()]) > 5  # wrong numbers vary
    for r in facts:  # the misconception, not the truth, is each topic's likeliest answer
        assert r["misconception"] != r["truth"]
        assert said[r["topic"]].most_common(1)[0][0] == r["misconception"]
    for r in _read(paths["cut_eval"]) + wrong:
        start, end = r["error_span"]
        assert (
            r["response"][start:end] != r["truth"] and r["judgment"] == f"Wrong: {r['response'][start:end]}."
        )
        assert r["response"][:start] + r["truth"] + r["response"][end:] == judged_facts.answer(
            r["topic"], r["truth"]
        )


@pytest.mark.parametrize("length", ["short", "long"])
@pytest.mark.parametrize("register", ["formal", "casual"])
def test_metaalign_rule_reads_the_task_answers(length, register):
    assert metaalign.measure_style(_answer("kettle", "calm", length, register)) == {
        "length": length,
        "register": register,
    }
    assert metaalign.measure_style("Certainly, lol.")["register"] is None


def test_accuracy_table_by_hand():
    table = accuracy_table(np.array([1.0, -2.0, 0.5, 3.0]), np.array(["a", "a", "b", "b"]))
    assert table["a"] == {"accuracy": 0.5, "margin": -0.5, "n": 2}
    assert table["b"] == {"accuracy": 1.0, "margin": 1.75, "n": 2}
    assert table["all"] == {"accuracy": 0.75, "margin": 0.625, "n": 4}


def test_span_scores_by_hand():
    records = [
        {"id": 0, "response": "is 7.", "error_span": [3, 4]},
        {"id": 1, "response": "is 42.", "error_span": [3, 5]},
    ]
    flagged = [
        # flags "7" and "." -> 1 of 2 flags in the span, which has 1 token
        {"id": 0, "pieces": list("is 7.") + [""], "flagged": [0, 0, 0, 1, 1, 0]},
        # "42" is one token here; flagged, the only flag
        {"id": 1, "pieces": ["is", " ", "42", "."], "flagged": [0, 0, 1, 0]},
    ]
    for row in flagged:
        ends = np.cumsum([len(p) for p in row["pieces"]])
        row["starts"] = (ends - [len(p) for p in row["pieces"]]).tolist()
        row["ends"] = ends.tolist()
    scores = cut.span_scores(records, flagged)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == 1.0 and scores["answers_with_span_flagged"] == 1.0
    flagged[1]["flagged"] = [1, 0, 0, 0]
    scores = cut.span_scores(records, flagged)
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == 0.5


def test_every_reproduction_is_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        eval_cmd.fidelity_main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in fidelity.REPRODUCTIONS)
    for module in fidelity.REPRODUCTIONS.values():
        for attr in ("NAME", "HELP", "add_arguments", "measure", "report", "plot"):
            assert hasattr(module, attr), (module.__name__, attr)


def test_cut_report_adds_the_misconception_rate_when_measured():
    flagging = {"lam": 1.2, "detection": "ratio", "n": 2, "precision": 1.0, "recall": 0.5}
    flagging |= {"flagged_tokens": 1, "span_tokens": 2, "answers_with_span_flagged": 0.5}
    rates = {"sft": {"greedy": 1.0, "sampled": 0.625}, "cut": {"greedy": 0.0, "sampled": 0.25}}
    table = {"flagging": flagging, "error_rate": rates, "num_prompts": 12, "num_samples": 8}
    table["flag_examples"] = []
    assert not any(line.startswith("misconception") for line in cut.report(table))
    rates["sft"] |= {"greedy_misconception": 1.0, "sampled_misconception": 0.5}
    rates["cut"] |= {"greedy_misconception": 0.0, "sampled_misconception": 0.125}
    lines = cut.report(table)
    at = next(i for i, line in enumerate(lines) if line.startswith("misconception"))
    assert lines[at + 1].split() == ["after", "SFT", "1.000", "0.500"]
    assert lines[at + 2].split() == ["after", "CUT", "0.000", "0.125"]
