"""A broken environment stops `alignjax train` with its own message, never as bad records."""

import subprocess
import sys

import pytest
import train_helpers as th

# `alignjax train` as it runs where jinja2 is not installed: transformers raises its own
# ImportError from apply_chat_template.
_WITHOUT_JINJA = (
    "import sys\n"
    "from transformers.utils import chat_template_utils as c\n"
    "c.is_jinja_available = lambda: False\n"
    "from alignjax.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("on_bad_record", ["error", "skip"])
def test_missing_jinja_stops_train_naming_the_package(tmp_path, on_bad_record):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _WITHOUT_JINJA,
            "train",
            "configs/quickstart.yaml",
            f"run_dir={run_dir}",
            f"data.on_bad_record={on_bad_record}",
            "logging.progress_bar=false",
        ],
        cwd=th.REPO,
        env=th.train_env(1, None),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("alignjax train: error: ") and "requires jinja2" in error, error
    assert "on_bad_record" not in error
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    if (run_dir / "metrics.jsonl").exists():
        assert "data/skipped" not in (run_dir / "metrics.jsonl").read_text()
