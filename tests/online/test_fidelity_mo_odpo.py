"""MO-ODPO's reproduction: dominance and exact 2-D hypervolume against hand-computed
fronts, the static-weight and unconditioned options of loss.mo_odpo, and their checks."""

import numpy as np
import pytest

from alignjax.core import configlib
from alignjax.evaluation.fidelity import mo_odpo as fidelity_mo_odpo
from alignjax.online.mo_odpo import MOODPOSection
from alignjax.rewards.functions import build_reward
from alignjax.evaluation.steerability import dominates, dominators, hypervolume_2d
from alignjax.train.config import load_config, stages
from mo_odpo_source import REWARDS, make_source, pair_texts, prompt_text, tiny_model, write_prompts

CONFIG = "configs/fidelity/mo_odpo.yaml"


def test_hypervolume_of_a_staircase():
    # Rectangles [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1]: union = 3 + 2 + 1.
    front = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume_2d(front, (0, 0)) == pytest.approx(6.0)
    # Order, duplicates and dominated points change nothing.
    assert hypervolume_2d([(3, 1), (1, 1), (2, 2), (1, 3), (2, 2)], (0, 0)) == pytest.approx(6.0)
    # A point not above the reference on both objectives adds nothing.
    assert hypervolume_2d([*front, (-1, 9), (5, 0)], (0, 0)) == pytest.approx(6.0)
    assert hypervolume_2d([(2, 3)], (1, 1)) == pytest.approx(2.0)
    assert hypervolume_2d(np.zeros((0, 2)), (0, 0)) == 0.0


def test_hypervolume_with_the_tasks_negative_brevity():
    # Brevity -4.42 / keyword 4 and brevity -0.67 / keyword 1, reference (-21.33, 0):
    # (20.66 x 1) + (16.91 x 3) = 20.66 + 50.73.
    points = [(-4.42, 4.0), (-0.67, 1.0)]
    assert hypervolume_2d(points, (-21.33, 0.0)) == pytest.approx(71.39)


def test_dominance():
    assert dominates((2, 1), (1, 1))
    assert not dominates((1, 1), (1, 1))  # equal is not better
    assert not dominates((2, 0), (1, 1)) and not dominates((1, 1), (2, 0))
    points = [(1, 1), (2, 1), (2, 2), (0, 3)]
    assert dominators(points, points) == [[1, 2], [2], [], []]


def _source(tmp_path, **section_kw):
    model = tiny_model()
    path = write_prompts(tmp_path / "prompts.jsonl", ["cats", "rain", "tea", "ink"])
    source, tok = make_source(model, path, **section_kw)
    return source, tok, model[1]


def _pairs(batch, tok):
    """(prompt text, chosen, rejected) of every valid pair."""
    return [
        (prompt_text(batch, tok, i), *pair_texts(batch, tok, i)) for i in np.flatnonzero(batch.pair_valid_P)
    ]


def _scores(text):
    return np.array([float(build_reward(r)(["x"], [text])[0]) for r in REWARDS])


def test_fixed_weights_score_and_show_one_weight_vector(tmp_path):
    source, tok, params = _source(tmp_path, fixed_weights=[0.25, 0.75])
    w = np.array([0.25, 0.75])
    pairs = _pairs(source.next_for(params, step=0), tok)
    assert len(pairs) >= 2  # Dirichlet draws would differ from prompt to prompt
    for prompt, chosen, rejected in pairs:
        assert "Weights: short 25%, ok 75%." in prompt
        assert _scores(chosen) @ w > _scores(rejected) @ w, (chosen, rejected)


def test_weights_kept_out_of_the_prompt(tmp_path):
    # Unconditioned: the weights still scalarise the rewards (here fixed, so it can be checked).
    source, tok, params = _source(tmp_path, fixed_weights=[0.0, 1.0], weights_in_prompt=False)
    pairs = _pairs(source.next_for(params, step=0), tok)
    assert pairs
    for prompt, chosen, rejected in pairs:
        assert "Weights" not in prompt and "Say something about" in prompt
        assert _scores(chosen)[1] > _scores(rejected)[1], (chosen, rejected)
    drawn, tok, params = _source(tmp_path, weights_in_prompt=False)
    assert all("Weights" not in p for p, _, _ in _pairs(drawn.next_for(params, step=0), tok))


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0.5, 0.6], "sums to 1.1"),
        ([1.5, -0.5], "number >= 0"),
        ([1.0], "1 entries for the 2 objectives"),
        ([], "number >= 0"),
    ],
)
def test_bad_fixed_weights_name_the_key(weights, message):
    with pytest.raises(ValueError, match="loss.mo_odpo.fixed_weights") as e:
        MOODPOSection(rewards=REWARDS, fixed_weights=weights)
    assert message in str(e.value)


def test_fidelity_config_and_its_documented_overrides():
    section = stages(load_config(CONFIG))[1].config.loss.section("mo_odpo")
    assert section.fixed_weights is None and section.weights_in_prompt
    static = stages(
        load_config(CONFIG, ["loss.mo_odpo.fixed_weights=[0.25,0.75]", "stages.1.train.steps=40"])
    )
    assert static[1].config.loss.section("mo_odpo").fixed_weights == [0.25, 0.75]
    assert (static[1].first_step, static[1].last_step) == (150, 190)
    uncond = stages(load_config(CONFIG, ["loss.mo_odpo.weights_in_prompt=false"]))[1]
    assert not uncond.config.loss.section("mo_odpo").weights_in_prompt
    with pytest.raises(
        configlib.ConfigError, match=r"mo_odpo.yaml: .*loss.mo_odpo.fixed_weights.*sums to 0.9"
    ):
        load_config(CONFIG, ["loss.mo_odpo.fixed_weights=[0.5,0.4]"])


def test_report_names_dominating_points_of_other_policies(tmp_path):
    def point(policy, name, b, k, w):
        return {
            "policy": policy,
            "name": name,
            "weights": w,
            "means": {"b": b, "k": k},
            "response_chars": 3.0,
        }

    points = [
        point("MO-ODPO", "b=1,k=0", -1.0, 1.0, {"b": 1.0, "k": 0.0}),
        point("MO-ODPO", "b=0,k=1", -4.0, 4.0, {"b": 0.0, "k": 1.0}),
        point("static", "b=1,k=0", -2.0, 1.0, {"b": 1.0, "k": 0.0}),
        point("unconditioned", "no weights", -4.0, 3.0, {}),
    ]
    means = np.array([[p["means"]["b"], p["means"]["k"]] for p in points])
    for p, d in zip(points, dominators(means, means)):
        p["dominated_by"] = [f"{points[j]['policy']} {points[j]['name']}" for j in d]
    table = {
        "objectives": ["b", "k"],
        "reference": [-10.0, 0.0],
        "points": points,
        "hypervolume": {
            name: hypervolume_2d(means[[p["policy"] == name for p in points]], (-10, 0))
            for name in fidelity_mo_odpo.POLICIES
        },
        "steerability": {"b": {"samples": 0.9, "n_samples": 8, "grid_means": 1.0, "n_points": 2}},
        "budget": {
            "MO-ODPO": [{"responses": 100}],
            "static": [{"responses": 50}, {"responses": 50}],
            "unconditioned": [{"responses": 100}],
        },
        "num_prompts": 2,
        "num_samples": 4,
    }
    lines = fidelity_mo_odpo.report(table)
    assert lines[3].startswith("static") and lines[3].endswith("MO-ODPO b=1,k=0")
    assert lines[4].endswith("MO-ODPO b=0,k=1")
    assert lines[1].endswith("  -")  # dominated by nothing
    # MO-ODPO: 9 x 1 + 6 x 3; static: 8 x 1; unconditioned: 6 x 3.
    assert (
        "hypervolume (reference b=-10.000, k=0.000): MO-ODPO 27.000, static 8.000, unconditioned 18.000"
        in lines
    )
    assert "responses sampled in training: MO-ODPO 100, static 100 (2 runs x 50), unconditioned 100" in lines
    fidelity_mo_odpo.plot(table, str(tmp_path / "front.png"))
    assert (tmp_path / "front.png").stat().st_size > 0
