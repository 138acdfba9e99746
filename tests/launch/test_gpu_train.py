"""launch/gpu_train.sh against stand-in nvidia-smi and alignjax."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

OVERRIDES = ["train.steps=10", "train.name=my run"]


@pytest.fixture
def config(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text("train:\n  steps: 1\n")
    return "configs/tiny.yaml"


def test_dry_run_prints_the_environment_and_the_train_command(launcher, tmp_path, config):
    result = launcher.run(
        "gpu_train.sh", "--dry-run", "--install", "--env", "TEST_A=x y", config, *OVERRIDES,
        cwd=tmp_path, env={"XLA_FLAGS": "--xla_dump_to=/tmp/d"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert launcher.calls() == []
    smi, mem, flags, extra, install, train = launcher.commands(result.stdout)
    assert smi == ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader"]
    assert mem == ["export", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"]
    # A flag the user set is kept, the scheduler flag is added after it.
    assert flags == [
        "export",
        "XLA_FLAGS=--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=true",
    ]
    assert extra == ["export", "TEST_A=x y"]
    assert install[:4] == ["python3", "-m", "pip", "install"] and install[4:5] == ["-e"]
    assert install[5].endswith("[cuda]") and install[5].removesuffix("[cuda]") == str(REPO)
    assert train == ["alignjax", "train", config, *OVERRIDES]


def test_run_checks_gpus_and_trains_with_xla_settings(launcher, tmp_path, config):
    result = launcher.run(
        "gpu_train.sh", "--env", "TEST_A=1", config, *OVERRIDES,
        cwd=tmp_path, env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "NVIDIA H100" in result.stdout
    assert [c[0] for c in launcher.calls()] == ["nvidia-smi", "alignjax"]
    (training,) = launcher.trainings()
    assert training["argv"] == ["train", config, *OVERRIDES]
    assert training["env"] == {
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5",  # the user's value wins over the default
        "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true",
        "TEST_A": "1",
    }


def test_mem_fraction_flag_overrides_the_environment(launcher, tmp_path, config):
    result = launcher.run(
        "gpu_train.sh",
        "--mem-fraction",
        "0.8",
        config,
        cwd=tmp_path,
        env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"},
    )
    assert result.returncode == 0, result.stderr
    assert launcher.trainings()[0]["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.8"


def test_a_broken_driver_stops_the_launch(launcher, tmp_path, config):
    result = launcher.run("gpu_train.sh", config, cwd=tmp_path, env={"STANDIN_NVIDIA_SMI_FAILS": "1"})
    assert result.returncode == 2
    assert "nvidia-smi failed" in result.stderr
    assert launcher.trainings() == []


def test_without_nvidia_smi_it_warns_and_trains(launcher, tmp_path, config):
    launcher.remove("nvidia-smi")
    result = launcher.run("gpu_train.sh", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nvidia-smi not found" in result.stderr
    assert len(launcher.trainings()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "missing CONFIG"),
        (["configs/nope.yaml"], "config 'configs/nope.yaml' not found"),
        (["--mem-fraction", "1.5", "configs/tiny.yaml"], "--mem-fraction '1.5' is not a number in (0, 1]"),
        (["--mem-fraction"], "--mem-fraction needs a value"),
        (["configs/tiny.yaml", "steps"], "'steps' after CONFIG is not a key=value override"),
    ],
)
def test_bad_arguments_name_what_to_fix(launcher, tmp_path, config, args, message):
    result = launcher.run("gpu_train.sh", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert launcher.trainings() == []


def test_alignjax_missing_from_path_is_reported(launcher, tmp_path, config):
    launcher.remove("alignjax")
    result = launcher.run(
        "gpu_train.sh", config, cwd=tmp_path, env={"PATH": f"{launcher.bin_dir}:/usr/bin:/bin"}
    )
    assert result.returncode == 2
    assert "alignjax is not on PATH" in result.stderr
