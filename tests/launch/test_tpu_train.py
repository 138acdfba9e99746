"""launch/tpu_train.sh against a stand-in gcloud, including a fake worker that runs it."""

import json
import os
import shlex
import subprocess

import pytest

GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone", "us-central2-b", "--project", "my-proj", "--worker=all"]
OVERRIDES = ["train.steps=10", "train.name=my run", 'data.template=it\'s "quoted" $HOME']
# The config's relative run_dir, resolved beside src (which every launch replaces).
KEPT_RUN_DIR = "run_dir=../runs/default"
# How many workers the TPU has (asked when run_dir may be on each worker's own disk).
DESCRIBE = [*GCLOUD_TPU, "describe", "my-pod", "--zone", "us-central2-b", "--project", "my-proj",
            "--format=json(networkEndpoints)"]  # fmt: skip


@pytest.fixture
def src(tmp_path):
    """A small git checkout: committed, untracked, ignored and deleted files."""
    src = tmp_path / "src"
    (src / "configs").mkdir(parents=True)
    (src / "runs").mkdir()
    (src / "configs" / "tiny.yaml").write_text("train:\n  steps: 1\n")
    (src / ".gitignore").write_text("runs/\n")
    (src / "gone.py").write_text("")
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    (src / "gone.py").unlink()
    (src / "new_module.py").write_text("# not committed yet\n")
    (src / "runs" / "checkpoint.bin").write_text("big")
    return src


def ssh_command(call):
    """The script a gcloud ssh call runs on the workers (inside its `bash -c`)."""
    assert call[:5] == [*GCLOUD_TPU, "ssh"]
    outer = shlex.split(call[call.index("--command") + 1])
    assert outer[:2] == ["bash", "-c"] and len(outer) == 3
    return outer[2]


def tpu_args(src, *extra):
    return ["--tpu", "my-pod", "--zone", "us-central2-b", "--project", "my-proj", "--src", str(src), *extra]


def test_dry_run_prints_every_command_and_calls_nothing(launcher, src):
    result = launcher.run(
        "tpu_train.sh",
        *tpu_args(src, "--env", "XLA_FLAGS=--xla_a --xla_b", "--dry-run"),
        "configs/tiny.yaml",
        *OVERRIDES,
    )
    assert result.returncode == 0, result.stderr
    assert launcher.calls() == []
    pack, scp, sync, install, train = launcher.commands(result.stdout)
    assert pack[0].endswith("launch/pack_src.sh") and pack[1] == str(src)
    tarball = pack[2]
    assert scp == [*GCLOUD_TPU, "scp", tarball, "my-pod:alignjax-src.tar.gz", *WHERE]
    for call in (sync, install, train):
        assert call[5] == "my-pod" and call[6:11] == WHERE
    assert "tar -xzf alignjax-src.tar.gz -C alignjax/src" in ssh_command(sync)
    assert 'venv/bin/pip install --quiet -e "src[tpu]"' in ssh_command(install)
    remote = ssh_command(train)
    assert "export XLA_FLAGS=--xla_a\\ --xla_b;" in remote
    assert "alignjax train configs/tiny.yaml train.steps=10 train.name=my\\ run " in remote
    # The override with a space and quotes survives as one word through both shells.
    train_words = shlex.split(remote[remote.index("alignjax train") : remote.index(" 2>&1")])
    assert train_words == ["alignjax", "train", "configs/tiny.yaml", *OVERRIDES, KEPT_RUN_DIR]
    # Comments say which step is which, and the output is a script bash accepts.
    assert [line[:5] for line in result.stdout.splitlines() if line.startswith("#")] == [
        "# 1/4", "# 2/4", "# 3/4", "# 4/4",
    ]  # fmt: skip
    assert subprocess.run(["bash", "-n"], input=result.stdout, text=True).returncode == 0


def test_run_syncs_installs_and_trains_on_all_workers(launcher, src):
    result = launcher.run("tpu_train.sh", *tpu_args(src), "configs/tiny.yaml", *OVERRIDES)
    assert result.returncode == 0, result.stderr
    describe, scp, sync, install, train = launcher.calls("gcloud")
    assert describe == DESCRIBE  # the config's run_dir is relative: on each worker's disk
    assert scp[:5] == [*GCLOUD_TPU, "scp"] and scp[6:] == ["my-pod:alignjax-src.tar.gz", *WHERE]
    assert [c[4] for c in (sync, install, train)] == ["ssh"] * 3
    assert all(c[5:11] == ["my-pod", *WHERE] for c in (sync, install, train))
    assert "-m venv venv" in ssh_command(install)
    assert "alignjax train configs/tiny.yaml train.steps=10 train.name=my\\ run" in ssh_command(train)
    assert launcher.trainings() == []  # nothing runs locally


def test_fake_worker_receives_the_code_and_exact_arguments(launcher, src, tmp_path):
    worker_home = tmp_path / "worker"
    (worker_home / "alignjax" / "venv" / "bin").mkdir(parents=True)
    (worker_home / "alignjax" / "venv" / "bin" / "activate").write_text("")
    (worker_home / "alignjax" / "src").mkdir()
    (worker_home / "alignjax" / "src" / "stale.py").write_text("from an older sync")
    env = {"STANDIN_WORKER_HOME": str(worker_home)}

    result = launcher.run(
        "tpu_train.sh",
        *tpu_args(src, "--skip-install", "--env", "TEST_SECRET", "--env", "TEST_FLAGS=a b"),
        "configs/tiny.yaml",
        *OVERRIDES,
        env={**env, "TEST_SECRET": "s3cr3t"},
    )
    assert result.returncode == 0, result.stderr
    assert [c[4] for c in launcher.calls("gcloud")] == ["describe", "scp", "ssh", "ssh"]

    shipped = worker_home / "alignjax" / "src"
    files = sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file())
    assert files == [".gitignore", "configs/tiny.yaml", "new_module.py"]
    (training,) = launcher.trainings()
    assert training["argv"] == ["train", "configs/tiny.yaml", *OVERRIDES, KEPT_RUN_DIR]
    assert training["cwd"] == str(shipped)
    assert training["env"]["TEST_SECRET"] == "s3cr3t" and training["env"]["TEST_FLAGS"] == "a b"
    (log,) = (worker_home / "alignjax" / "logs").glob("train-*.log")
    assert log.read_text() == "alignjax stand-in trained configs/tiny.yaml\n"
    assert "alignjax stand-in trained configs/tiny.yaml" in result.stdout
    assert not (worker_home / "alignjax-src.tar.gz").exists()


def test_pasting_the_dry_run_does_what_the_run_does(launcher, src, tmp_path):
    worker_home = tmp_path / "worker"
    (worker_home / "alignjax" / "venv" / "bin").mkdir(parents=True)
    (worker_home / "alignjax" / "venv" / "bin" / "activate").write_text("")
    dry = launcher.run(
        "tpu_train.sh", *tpu_args(src, "--skip-install", "--dry-run"), "configs/tiny.yaml", *OVERRIDES
    )
    pasted = subprocess.run(
        ["bash", "-e"],
        input=dry.stdout,
        env={**launcher.env, "STANDIN_WORKER_HOME": str(worker_home)},
        text=True,
    )
    assert pasted.returncode == 0
    (training,) = launcher.trainings()
    assert training["argv"] == ["train", "configs/tiny.yaml", *OVERRIDES, KEPT_RUN_DIR]


def test_ref_ships_the_commit_not_the_working_tree(launcher, src):
    result = launcher.run("tpu_train.sh", *tpu_args(src, "--ref", "HEAD", "--dry-run"), "configs/tiny.yaml")
    assert result.returncode == 0, result.stderr
    pack = launcher.commands(result.stdout)[0]
    assert pack[1:] == [str(src), pack[2], "HEAD"]
    missing = launcher.run("tpu_train.sh", *tpu_args(src, "--ref", "HEAD", "--dry-run"), "new_module.py")
    assert missing.returncode == 2 and "not in commit 'HEAD'" in missing.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "z", "configs/tiny.yaml"], "missing --tpu NAME"),
        (["--tpu", "my-pod", "configs/tiny.yaml"], "missing --zone ZONE"),
        (["--tpu", "my-pod", "--zone", "z"], "missing CONFIG"),
        (["--tpu", "--zone", "z", "configs/tiny.yaml"], "--tpu needs a value"),
        (["--tpu", "p", "--zone", "z", "configs/nope.yaml"], "config 'configs/nope.yaml' not found"),
        (["--tpu", "p", "--zone", "z", "configs/tiny.yaml", "--dry-run"], "'--dry-run' after CONFIG"),
        (["--tpu", "p", "--zone", "z", "--env", "1BAD=x", "configs/tiny.yaml"], "'1BAD' is not a valid"),
        (
            ["--tpu", "p", "--zone", "z", "--env", "TEST_UNSET_VAR", "configs/tiny.yaml"],
            "TEST_UNSET_VAR is not set",
        ),
        (["--tpu", "p", "--zone", "z", "--bogus", "configs/tiny.yaml"], "unknown option '--bogus'"),
    ],
)
def test_bad_arguments_name_what_to_fix(launcher, src, args, message):
    result = launcher.run("tpu_train.sh", "--src", str(src), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("tpu_train.sh: error: ") and message in result.stderr
    assert launcher.calls() == []


def test_help_documents_every_flag(launcher):
    result = launcher.run("tpu_train.sh", "--help")
    assert result.returncode == 0
    for flag in ("--tpu", "--zone", "--project", "--src", "--ref", "--skip-install", "--dry-run", "--env"):
        assert flag in result.stdout
    assert json.dumps(launcher.calls()) == "[]"


def _with_topology(src):
    (src / "configs" / "pod.yaml").write_text("train:\n  steps: 1\nmesh:\n  fsdp: -1\n  topology: v5e:4x4\n")
    return "configs/pod.yaml"


def test_the_step_is_compiled_for_the_slice_before_any_worker_starts(launcher, src):
    config = _with_topology(src)
    result = launcher.run("tpu_train.sh", *tpu_args(src), config, "train.steps=10")
    assert result.returncode == 0, result.stderr
    assert launcher.compile_checks() == [["compile-check", str(src / config), "train.steps=10"]]
    # Then the usual four steps; --topology names the slice for configs that do not.
    assert [c[4] for c in launcher.calls("gcloud")] == ["describe", "scp", "ssh", "ssh", "ssh"]
    steps = [c[0] if c[0] == "alignjax" else c[4] for c in launcher.calls()]
    assert steps.index("alignjax") < steps.index("scp")
    result = launcher.run(
        "tpu_train.sh", *tpu_args(src, "--topology", "v5p:2x2x1", "--dry-run"), "configs/tiny.yaml"
    )
    assert result.returncode == 0 and result.stdout.splitlines()[:2] == [
        "# 0/4 compile-check configs/tiny.yaml for the slice, here (skip with --no-compile-check)",
        f"alignjax compile-check {src}/configs/tiny.yaml --topology v5p:2x2x1",
    ]


def test_a_step_that_does_not_fit_stops_before_the_workers(launcher, src):
    config = _with_topology(src)
    result = launcher.run("tpu_train.sh", *tpu_args(src), config, env={"STANDIN_DOES_NOT_FIT": "1"})
    assert result.returncode == 2 and "the step does not fit the slice" in result.stderr
    assert [c[4] for c in launcher.calls("gcloud")] == ["describe"]  # no worker was touched
    skipped = launcher.run("tpu_train.sh", *tpu_args(src, "--no-compile-check"), config)
    assert skipped.returncode == 0 and len(launcher.compile_checks()) == 1  # only the first run's


def test_help_says_run_dir_must_be_shared_by_every_worker(launcher):
    text = " ".join(launcher.run("tpu_train.sh", "--help").stdout.split())
    assert (
        "run_dir (CONFIG's, or a run_dir=... override) must be one directory that every worker sees" in text
    )
    assert (
        "bucket mounted on every worker (gcsfuse)" in text and "alignjax train checks this at start" in text
    )


@pytest.mark.parametrize(
    "workers, overrides, warned",
    [
        (4, [], True),  # runs/default: relative, under REMOTE_DIR/src on each worker
        (4, ["run_dir=/home/me/runs/x"], True),
        (1, [], False),  # one worker: its own disk is the only one
        (4, ["run_dir=/mnt/shared/runs/x"], False),  # maybe a mount; alignjax train checks it
    ],
)
def test_a_run_dir_on_each_worker_disk_of_a_multi_worker_tpu_is_warned(
    launcher, src, workers, overrides, warned
):
    result = launcher.run(
        "tpu_train.sh",
        *tpu_args(src),
        "configs/tiny.yaml",
        *overrides,
        env={"STANDIN_TPU_WORKERS": str(workers)},
    )
    assert result.returncode == 0, result.stderr
    run_dir = overrides[0].split("=", 1)[1] if overrides else "runs/default"
    warning = f"warning: run_dir '{run_dir}' is on each worker's own disk, and the run has {workers} hosts"
    assert (warning in result.stderr) == warned, result.stderr
    if warned:
        assert "a bucket mounted on every host with gcsfuse" in result.stderr
    asked = [c[4] for c in launcher.calls("gcloud")].count("describe")
    assert asked == (0 if run_dir.startswith("/mnt/") else 1)


def test_config_run_dir_is_read_from_the_config_unless_overridden(launcher, src):
    (src / "configs" / "own.yaml").write_text(
        'seed: 1\nrun_dir: "runs/own"  # where it goes\ntrain:\n  run_dir: no\n'
    )
    result = launcher.run(
        "tpu_train.sh", *tpu_args(src), "configs/own.yaml", env={"STANDIN_TPU_WORKERS": "2"}
    )
    assert (
        "warning: run_dir 'runs/own' is on each worker's own disk, and the run has 2 hosts" in result.stderr
    )
    result = launcher.run("tpu_train.sh", *tpu_args(src, "--dry-run"), "configs/own.yaml", "run_dir=/tmp/r")
    assert (
        "warning: run_dir '/tmp/r' is on each worker's own disk; if my-pod has more than one worker"
        in result.stderr
    )
    # Asked once, by the first run: the dry run asks nothing.
    assert [c for c in launcher.calls("gcloud") if c[4] == "describe"] == [DESCRIBE]


def test_a_relaunch_keeps_the_checkpoints_of_a_relative_run_dir(launcher, src, tmp_path):
    """Every launch replaces REMOTE_DIR/src; the run's checkpoints must survive it, so the
    same command relaunched after a preemption resumes instead of starting over."""
    worker_home = tmp_path / "worker"
    (worker_home / "alignjax" / "venv" / "bin").mkdir(parents=True)
    (worker_home / "alignjax" / "venv" / "bin" / "activate").write_text("")
    env = {"STANDIN_WORKER_HOME": str(worker_home)}
    args = [*tpu_args(src, "--skip-install"), "configs/tiny.yaml", "run_dir=runs/mine", "train.steps=3"]
    assert launcher.run("tpu_train.sh", *args, env=env).returncode == 0
    # What the trainer wrote there, as the stand-in does not write anything.
    checkpoint = worker_home / "alignjax" / "runs" / "mine" / "checkpoints" / "100"
    checkpoint.mkdir(parents=True)
    result = launcher.run("tpu_train.sh", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert checkpoint.is_dir()
    first, second = launcher.trainings()
    for training in (first, second):
        assert training["argv"] == ["train", "configs/tiny.yaml", "train.steps=3", "run_dir=../runs/mine"]
        # Resolved from the workers' working directory, that is ~/alignjax/runs/mine.
        assert os.path.normpath(os.path.join(training["cwd"], "../runs/mine")) == str(checkpoint.parents[1])
    assert "run_dir 'runs/mine' is relative: on the workers it is ~/alignjax/runs/mine" in result.stderr
