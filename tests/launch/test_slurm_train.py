"""launch/slurm_train.sh: the batch script it submits, and the processes srun starts."""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "slurm_train.sh"
OVERRIDES = ["train.steps=10", "train.name=my run"]
INSIDE_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_JOB_NUM_NODES": "2"}
# 10000 + job id % 20000: jobs that share a first node get different ports.
COORDINATOR = "node01:14242"


@pytest.fixture
def config(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text("train:\n  steps: 1\n")
    return "configs/tiny.yaml"


SUBMIT = ["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--time", "04:00:00"]


def test_dry_run_prints_the_batch_script(launcher, tmp_path, config):
    result = launcher.run(
        "slurm_train.sh", *SUBMIT, "--sbatch-arg=--account=team", "--env", "TEST_A=x y", "--dry-run", config, *OVERRIDES,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert launcher.calls() == []
    assert result.stdout == (
        "#!/bin/bash\n"
        "#SBATCH --job-name=alignjax\n"
        "#SBATCH --nodes=2\n"
        "#SBATCH --ntasks-per-node=1\n"
        "#SBATCH --gpus-per-node=8\n"
        "#SBATCH --partition=gpu\n"
        "#SBATCH --time=04:00:00\n"
        f"#SBATCH --chdir={tmp_path}\n"
        "#SBATCH --output=logs/slurm-%j.out\n"
        "#SBATCH --account=team\n"
        "# Written by launch/slurm_train.sh: inside the allocation it starts one process per node.\n"
        f"exec {SCRIPT} --env 'TEST_A=x y' {config} train.steps=10 'train.name=my run'\n"
    )


def test_submit_then_job_starts_one_process_per_node(launcher, tmp_path, config):
    result = launcher.run("slurm_train.sh", *SUBMIT, "--env", "TEST_SECRET", config, *OVERRIDES,
                          cwd=tmp_path, env={"TEST_SECRET": "s3cr3t"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert launcher.calls() == [["sbatch", "--parsable"]]
    assert "submitted job 4242" in result.stderr
    assert (tmp_path / "logs").is_dir()  # Slurm would drop the output without it
    batch_script = (launcher.out_dir / "sbatch_script").read_text()
    # A secret forwarded by name is inherited by the job, never written into the script.
    assert "s3cr3t" not in batch_script and "--env TEST_SECRET " in batch_script

    # Now be the batch job: run its script inside a (fake) two-node allocation.
    job = launcher.run_file(
        tmp_path / "job.sh", batch_script, cwd=tmp_path, env={**INSIDE_JOB, "TEST_SECRET": "s3cr3t"}
    )
    assert job.returncode == 0, job.stderr
    assert [c[0] for c in launcher.calls()[1:]] == ["scontrol", "srun", "alignjax", "alignjax"]
    assert launcher.calls("scontrol") == [["scontrol", "show", "hostnames", "node[01-02]"]]
    trainings = launcher.trainings()
    assert [t["env"]["ALIGNJAX_PROCESS_ID"] for t in trainings] == ["0", "1"]
    for training in trainings:
        assert training["argv"] == ["train", config, *OVERRIDES]
        assert training["env"]["ALIGNJAX_COORDINATOR"] == COORDINATOR
        assert training["env"]["ALIGNJAX_NUM_PROCESSES"] == "2"
        assert training["env"]["TEST_SECRET"] == "s3cr3t"
        assert training["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
        assert training["cwd"] == str(tmp_path)


def test_inside_allocation_dry_run_prints_exports_and_srun(launcher, tmp_path, config):
    result = launcher.run(
        "slurm_train.sh", "--port", "5555", "--dry-run", config, *OVERRIDES, cwd=tmp_path, env=INSIDE_JOB
    )
    assert result.returncode == 0, result.stderr
    assert [c[0] for c in launcher.calls()] == ["scontrol"]  # a query; srun is not called
    *exports, srun = launcher.commands(result.stdout)
    assert exports[:2] == [
        ["export", "ALIGNJAX_COORDINATOR=node01:5555"],
        ["export", "ALIGNJAX_NUM_PROCESSES=2"],
    ]
    assert srun[:6] == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "--label",
    ]
    assert srun[6:8] == ["bash", "-c"] and "ALIGNJAX_PROCESS_ID=$SLURM_PROCID" in srun[8]
    assert srun[-4:] == ["train", config, *OVERRIDES]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus-per-node", "8", "configs/tiny.yaml"], "missing --nodes N"),
        (["--nodes", "2", "configs/tiny.yaml"], "missing --gpus-per-node G"),
        (
            ["--nodes", "two", "--gpus-per-node", "8", "configs/tiny.yaml"],
            "--nodes 'two' is not a positive integer",
        ),
        (["--nodes", "2", "--gpus-per-node", "8"], "missing CONFIG"),
        (
            ["--nodes", "2", "--gpus-per-node", "8", "configs/nope.yaml"],
            "config 'configs/nope.yaml' not found",
        ),
    ],
)
def test_bad_arguments_name_what_to_fix(launcher, tmp_path, config, args, message):
    result = launcher.run("slurm_train.sh", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("slurm_train.sh: error: ") and message in result.stderr
    assert launcher.calls() == []


def test_inside_allocation_without_nodelist_is_an_error(launcher, tmp_path, config):
    result = launcher.run("slurm_train.sh", config, cwd=tmp_path, env={"SLURM_JOB_ID": "1"})
    assert result.returncode == 2 and "SLURM_JOB_NODELIST is not" in result.stderr
    assert launcher.calls() == []


def test_help_says_run_dir_must_be_shared_by_every_node(launcher):
    text = " ".join(launcher.run("slurm_train.sh", "--help").stdout.split())
    assert "run_dir (CONFIG's, or a run_dir=... override) must be one directory that every node sees" in text
    assert "shared filesystem (NFS, Lustre, GPFS)" in text and "alignjax train checks this at start" in text


LOCAL_TYPES = ("ext2/ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlayfs", "overlay", "f2fs", "ramfs")


@pytest.mark.parametrize("inside", [False, True])
def test_a_run_dir_in_tmp_on_several_nodes_is_warned(launcher, tmp_path, config, inside):
    args = ["--dry-run", config, "run_dir=/tmp/my-run"]
    if inside:  # the job itself, in a two-node allocation
        result = launcher.run("slurm_train.sh", *args, cwd=tmp_path, env=INSIDE_JOB)
    else:
        result = launcher.run("slurm_train.sh", *SUBMIT, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "warning: run_dir '/tmp/my-run' is in a temporary directory, and the run has 2 hosts" in result.stderr
    )
    assert "a bucket mounted on every host with gcsfuse" in result.stderr


def test_a_run_dir_on_a_local_filesystem_is_warned_only_for_several_nodes(launcher, tmp_path, config):
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True
    ).stdout.strip()
    several = launcher.run("slurm_train.sh", *SUBMIT, "--dry-run", config, cwd=tmp_path)
    warning = f"warning: run_dir 'runs/default' is on a local {fs} filesystem here, and the run has 2 hosts"
    assert (warning in several.stderr) == (fs in LOCAL_TYPES), (fs, several.stderr)
    one = ["--nodes", "1", "--gpus-per-node", "8", "--dry-run", config, "run_dir=/tmp/my-run"]
    assert "warning" not in launcher.run("slurm_train.sh", *one, cwd=tmp_path).stderr
