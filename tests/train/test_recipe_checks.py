"""Recipes cannot silently train a real model on their demo data, their headers' commands
for a real model load, and flip_eval must name real eval sets."""

import glob
import os
import shlex

import pytest

from alignjax.core.configlib import ConfigError
from alignjax.train.config import load_config, stages
from alignjax.train.recipe_checks import _builtin_paths

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DEMO_RECIPES = ["quickstart", "metaalign", "sparsepo", "pdpo", "cut", "kto", "mo_odpo_quickstart"]


def _header_lines(name):
    with open(os.path.join(ROOT, "configs", f"{name}.yaml")) as f:
        return [
            line[1:].strip()
            for line in f
            if line.startswith("#") and line[1:].strip().startswith(f"alignjax train configs/{name}.yaml")
        ]


def _header_commands(name):
    return [shlex.split(line) for line in _header_lines(name)]


@pytest.mark.parametrize("name", DEMO_RECIPES)
def test_each_demo_recipe_header_has_a_real_model_command_that_loads(name):
    commands = _header_commands(name)
    assert len(commands) == 1, f"configs/{name}.yaml: one real-model command in the header"
    overrides = commands[0][3:]
    assert any(o.startswith("model.hf_path=") for o in overrides)
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"), overrides)
    for stage in stages(cfg):
        assert not _builtin_paths(stage.config.data.train), stage.name
        assert not _builtin_paths(stage.config.data.eval), stage.name


def test_the_training_docs_show_each_real_model_command():
    with open(os.path.join(ROOT, "docs", "training.md")) as f:
        page = f.read()
    for name in DEMO_RECIPES:
        assert _header_lines(name)[0] in page, name  # as written, quotes included


def test_the_demo_data_trap_names_the_key_to_set():
    with pytest.raises(ConfigError, match=r"stages\.0\.data\.train=YOUR_FILE"):
        load_config(
            os.path.join(ROOT, "configs", "metaalign.yaml"),
            ["model.preset=null", "model.hf_path=/models/m", "data.train=pairs.jsonl"],
        )
    # Own model alone (the data left on the demo task) is the same mistake.
    with pytest.raises(ConfigError, match=r"data\.train=YOUR_FILE"):
        load_config(os.path.join(ROOT, "configs", "cut.yaml"), ["model.preset=null", "model.hf_path=/m"])
    # The demo as shipped is fine.
    for path in glob.glob(os.path.join(ROOT, "configs", "*.yaml")):
        if os.path.basename(path)[:-5] in DEMO_RECIPES:
            load_config(path)


def test_flip_eval_must_name_existing_eval_sets():
    with pytest.raises(ConfigError, match=r"train\.flip_eval=\['heldout', 'flipped'\].*no set named"):
        load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), ["data.eval={heldout: builtin:eval}"])
