"""Stand-ins for the cluster tools the launch scripts call, and a runner for the scripts.

Every stand-in appends its argv (tool name first) as one JSON list per line to
calls.jsonl, then imitates just enough of the real tool for the scripts to go on:
`gcloud ... scp/ssh` can act on a fake worker home directory, `gcloud ... describe`
answers for a TPU of STANDIN_TPU_WORKERS workers, `srun` runs its command
once per task with SLURM_PROCID set, and `alignjax` records what training would have
received.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"

STANDIN = r"""
import json, os, shutil, subprocess, sys

tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
out_dir = os.environ["STANDIN_DIR"]
with open(os.path.join(out_dir, "calls.jsonl"), "a") as f:
    f.write(json.dumps([tool] + args) + "\n")

if tool == "gcloud":
    # With a fake worker home, act like one TPU worker; otherwise only record.
    home = os.environ.get("STANDIN_WORKER_HOME")
    if args[3] == "describe":  # a TPU of STANDIN_TPU_WORKERS workers (default 1)
        workers = int(os.environ.get("STANDIN_TPU_WORKERS", "1"))
        endpoints = [{"ipAddress": f"10.0.0.{i + 2}", "port": 8470} for i in range(workers)]
        print(json.dumps({"networkEndpoints": endpoints}, indent=2))
    elif home and args[3] == "scp":
        shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
    elif home and args[3] == "ssh":
        command = args[args.index("--command") + 1]
        # sshd hands the command string to the login shell.
        result = subprocess.run(["bash", "-c", command], cwd=home, env={**os.environ, "HOME": home})
        sys.exit(result.returncode)
elif tool == "sbatch":
    with open(os.path.join(out_dir, "sbatch_script"), "w") as f:
        f.write(sys.stdin.read())
    print("4242")
elif tool == "scontrol":
    print("node01\nnode02")
elif tool == "srun":
    ntasks = int(next(a for a in args if a.startswith("--ntasks=")).split("=")[1])
    command = args[next(i for i, a in enumerate(args) if not a.startswith("-")):]
    for rank in range(ntasks):
        result = subprocess.run(command, env={**os.environ, "SLURM_PROCID": str(rank)})
        if result.returncode:
            sys.exit(result.returncode)
elif tool == "nvidia-smi":
    if os.environ.get("STANDIN_NVIDIA_SMI_FAILS"):
        print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
        sys.exit(9)
    print("0, NVIDIA H100 80GB HBM3, 81559 MiB")
elif tool == "alignjax" and args[:1] == ["compile-check"]:
    with open(os.path.join(out_dir, "compile_checks.jsonl"), "a") as f:
        f.write(json.dumps(args) + "\n")
    sys.exit(1 if os.environ.get("STANDIN_DOES_NOT_FIT") else 0)
elif tool == "alignjax":
    env = {k: v for k, v in os.environ.items() if k.startswith(("ALIGNJAX_", "XLA_", "TEST_"))}
    with open(os.path.join(out_dir, "alignjax.jsonl"), "a") as f:
        f.write(json.dumps({"argv": args, "env": env, "cwd": os.getcwd()}) + "\n")
    print(f"alignjax stand-in trained {args[1]}")
"""

TOOLS = ("gcloud", "sbatch", "srun", "scontrol", "nvidia-smi", "alignjax")


class Launcher:
    def __init__(self, tmp_path: Path):
        self.out_dir = tmp_path / "standin"
        self.bin_dir = tmp_path / "bin"
        self.out_dir.mkdir()
        self.bin_dir.mkdir()
        for tool in TOOLS:
            path = self.bin_dir / tool
            path.write_text(f"#!{sys.executable}\n{STANDIN}")
            path.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "XLA_", "ALIGNJAX_"))}
        self.env = {**env, "PATH": f"{self.bin_dir}:{env['PATH']}", "STANDIN_DIR": str(self.out_dir)}

    def remove(self, tool: str) -> None:
        (self.bin_dir / tool).unlink()

    def run(self, script: str, *args: str, cwd=None, env=None, stdin=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(LAUNCH / script), *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def run_file(self, path: Path, text: str, *, cwd=None, env=None) -> subprocess.CompletedProcess:
        """Writes `text` to `path` and runs it with bash, as Slurm runs a batch script."""
        path.write_text(text)
        return subprocess.run(
            ["bash", str(path)],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self, tool: str | None = None) -> list[list[str]]:
        path = self.out_dir / "calls.jsonl"
        if not path.exists():
            return []
        calls = [json.loads(line) for line in path.read_text().splitlines()]
        return [c for c in calls if tool is None or c[0] == tool]

    def compile_checks(self) -> list[list[str]]:
        path = self.out_dir / "compile_checks.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def trainings(self) -> list[dict]:
        path = self.out_dir / "alignjax.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @staticmethod
    def commands(stdout: str) -> list[list[str]]:
        """The commands of a --dry-run script, each split into words as bash would."""
        return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


@pytest.fixture
def launcher(tmp_path):
    return Launcher(tmp_path)
