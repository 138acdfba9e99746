"""Start-up noise: Orbax's routine warnings dropped (others kept), no TPU probe without chips."""

import logging
import os
import subprocess
import sys

from alignjax.core import quiet

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.yaml")


def test_routine_orbax_warnings_are_dropped_and_others_kept(caplog):
    quiet.quiet_logs()
    quiet.quiet_logs()  # idempotent: one filter
    absl = logging.getLogger("absl")
    assert sum(isinstance(f, quiet._DropRoutineOrbax) for f in absl.filters) == 1
    with caplog.at_level(logging.WARNING, logger="absl"):
        absl.warning("Given directory is read only=%s", "/ckpt")
        absl.warning("CheckpointManagerOptions.read_only=True, setting create=False.")
        absl.warning("Metadata file does not exist: %s", "/ckpt/1/_CHECKPOINT_METADATA")
        absl.warning("Waiting for previous save to complete took %f seconds.", 1.5)
        absl.warning("Checkpoint at step 7 is corrupt")
    assert [r.getMessage() for r in caplog.records] == ["Checkpoint at step 7 is corrupt"]


def test_cpu_is_chosen_only_when_libtpu_is_installed_without_chips(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(quiet, "_has_tpu_chips", lambda: False)
    found = {"libtpu"}
    monkeypatch.setattr(quiet.importlib.util, "find_spec", lambda name: name if name in found else None)
    quiet.skip_absent_tpu()
    assert os.environ["JAX_PLATFORMS"] == "cpu"

    for chips, plugins, preset in (
        (True, set(), None),
        (False, {"jax_cuda12_plugin"}, None),
        (False, set(), "tpu"),
    ):
        monkeypatch.delenv("JAX_PLATFORMS", raising=False)
        if preset:
            monkeypatch.setenv("JAX_PLATFORMS", preset)
        monkeypatch.setattr(quiet, "_has_tpu_chips", lambda chips=chips: chips)
        found = {"libtpu", *plugins}
        quiet.skip_absent_tpu()
        assert os.environ.get("JAX_PLATFORMS") == preset, (chips, plugins, preset)


def test_a_command_prints_no_tpu_probe(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run(
        [sys.executable, "-m", "alignjax.cli", "describe", CONFIG],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    if not quiet._has_tpu_chips():
        assert "libtpu" not in out.stderr and "Unable to initialize backend" not in out.stderr, out.stderr
    assert out.returncode == 0, out.stderr
