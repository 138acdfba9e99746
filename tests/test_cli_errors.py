"""Every `alignjax` sub-command reports a user's mistake as one line and exit status 2, and lets a
bug (KeyError, TypeError, ...) through with its traceback."""

import logging
import subprocess
import sys
import types

import pytest

from alignjax.commands import bench, plot

from alignjax import cli

from alignjax.core import configlib, errors
from alignjax.evaluation import grid as eval_grid
from alignjax.commands import data as data_cmd
from alignjax.commands import generate as generate_cmd
from alignjax.commands import train as train_cmd
from alignjax.train import config as train_config
from alignjax.train import loop


def _stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_missing_config_file_is_one_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert cli.main(["describe", str(missing)]) == 2
    assert _stderr_lines(capsys) == [f"alignjax describe: error: {missing}: config file not found"]


def test_unknown_config_key_names_the_key_and_the_fix(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: tiny\n  atention_backend: xla\n")
    assert cli.main(["describe", str(path)]) == 2
    assert _stderr_lines(capsys) == [
        "alignjax describe: error: unknown config key 'model.atention_backend'; "
        "did you mean 'attention_backend'?"
    ]


def test_an_override_that_is_not_yaml_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: tiny\n")
    assert cli.main(["describe", str(path), "model.preset=[tiny"]) == 2
    assert _stderr_lines(capsys) == [
        "alignjax describe: error: override 'model.preset=[tiny': the value is not valid YAML "
        "(expected ',' or ']', but got '<stream end>')"
    ]


def test_the_installed_command_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "missing.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "alignjax.cli", "describe", str(missing)], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"alignjax describe: error: {missing}: config file not found"]


def test_a_bug_exits_1_with_its_traceback(tmp_path):
    # A KeyError from inside the command is a bug in alignjax: the old handler printed
    # "error: 'model'" and nothing to find it by.
    script = (
        "import sys\n"
        "from alignjax import cli\n"
        "from alignjax.core import configlib\n"
        "def load_yaml(path):\n"
        "    raise KeyError('model')\n"
        "configlib.load_yaml = load_yaml\n"
        f"sys.exit(cli.main(['describe', {str(tmp_path / 'c.yaml')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback (most recent call last):" in proc.stderr
    assert "in load_yaml" in proc.stderr
    assert proc.stderr.splitlines()[-1] == "KeyError: 'model'"
    assert "error:" not in proc.stderr


# (command line, module, function the command calls): each sub-command's entry point.
COMMANDS = {
    "describe": (lambda tmp: ["describe", str(tmp / "c.yaml")], configlib, "load_yaml"),
    "train": (lambda tmp: ["train", str(tmp / "c.yaml")], train_cmd, "load_config"),
    "plot": (lambda tmp: ["plot", str(tmp)], plot, "plot_run"),
    "bench": (lambda tmp: ["bench", "logps"], bench, "_logps"),
    "generate": (lambda tmp: ["generate", str(tmp), "--prompt", "hi"], generate_cmd, "load_policy"),
    "eval": (lambda tmp: ["eval", str(tmp), "--out", str(tmp / "out")], eval_grid, "build_labelled_rewards"),
    "precompute-ref": (lambda tmp: ["precompute-ref", str(tmp / "c.yaml")], train_config, "load_config"),
    "data check": (lambda tmp: ["data", "check", str(tmp / "c.yaml")], data_cmd, "load_config"),
}


def _raise(exc):
    def fn(*args, **kwargs):
        raise exc

    return fn


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch):
    # `alignjax train` reconfigures the root logger; not this test process's.
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    "exc",
    [
        configlib.ConfigError("train.steps: expected int, got 'ten'"),
        FileNotFoundError("no such file: /data/x.jsonl"),
        errors.MissingDependencyError("needs wandb: pip install wandb"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_user_errors_are_one_line_and_status_2(command, exc, tmp_path, monkeypatch, capsys):
    argv, module, name = COMMANDS[command]
    monkeypatch.setattr(module, name, _raise(exc))
    assert cli.main(argv(tmp_path)) == 2
    assert _stderr_lines(capsys) == [f"alignjax {command}: error: {exc}"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    "exc",
    [KeyError("x"), TypeError("bad operand"), AttributeError("no attribute 'y'"), AssertionError()],
    ids=lambda e: type(e).__name__,
)
def test_bugs_propagate_unchanged(command, exc, tmp_path, monkeypatch, capsys):
    argv, module, name = COMMANDS[command]
    monkeypatch.setattr(module, name, _raise(exc))
    with pytest.raises(type(exc)) as raised:
        cli.main(argv(tmp_path))
    assert raised.value is exc
    assert "error:" not in capsys.readouterr().err


def test_argparse_usage_errors_keep_their_exit(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["plot"])  # RUN_DIR missing
    assert raised.value.code == 2
    assert "the following arguments are required: run_dir" in capsys.readouterr().err


def test_train_still_returns_143_when_preempted(tmp_path, monkeypatch, capsys):
    cfg = types.SimpleNamespace(run_dir="r")
    monkeypatch.setattr(train_cmd, "load_config", lambda path, overrides: cfg)
    monkeypatch.setattr(train_cmd, "run", _raise(loop.Preempted(7)))
    assert cli.main(["train", str(tmp_path / "c.yaml")]) == 143
    assert capsys.readouterr().out == "preempted: checkpointed step 7 in r/checkpoints; rerun to resume\n"


def test_run_command_passes_the_status_through():
    assert errors.run_command("x", lambda a, b: a + b, 3, 4) == 7
