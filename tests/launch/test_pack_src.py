"""launch/pack_src.sh: what goes into the tarball shipped to TPU workers."""

import subprocess
import tarfile
from pathlib import Path

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def names(tarball):
    with tarfile.open(tarball) as tar:
        return sorted(m.name.removeprefix("./") for m in tar.getmembers() if m.isfile())


def pack(*args):
    return subprocess.run(
        ["bash", str(LAUNCH / "pack_src.sh"), *map(str, args)], capture_output=True, text=True
    )


def make_checkout(root):
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("v1\n")
    (root / "deleted.py").write_text("")
    (root / ".gitignore").write_text("runs/\n*.pyc\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    (root / "pkg" / "a.py").write_text("v2, not committed\n")
    (root / "deleted.py").unlink()
    (root / "untracked.py").write_text("")
    (root / "runs").mkdir()
    (root / "runs" / "ckpt.bin").write_text("ignored")
    (root / "pkg" / "a.pyc").write_text("ignored")


def test_working_tree_as_git_sees_it(tmp_path):
    make_checkout(tmp_path / "src")
    result = pack(tmp_path / "src", tmp_path / "out.tar.gz")
    assert result.returncode == 0, result.stderr
    assert names(tmp_path / "out.tar.gz") == [".gitignore", "pkg/a.py", "untracked.py"]
    with tarfile.open(tmp_path / "out.tar.gz") as tar:
        assert tar.extractfile("pkg/a.py").read() == b"v2, not committed\n"


def test_ref_packs_exactly_the_commit(tmp_path):
    make_checkout(tmp_path / "src")
    result = pack(tmp_path / "src", tmp_path / "out.tar.gz", "HEAD")
    assert result.returncode == 0, result.stderr
    assert names(tmp_path / "out.tar.gz") == [".gitignore", "deleted.py", "pkg/a.py"]
    with tarfile.open(tmp_path / "out.tar.gz") as tar:
        assert tar.extractfile("pkg/a.py").read() == b"v1\n"


def test_unknown_ref_and_plain_directory(tmp_path):
    make_checkout(tmp_path / "src")
    bad = pack(tmp_path / "src", tmp_path / "out.tar.gz", "no-such-branch")
    assert bad.returncode == 2 and "'no-such-branch' is not a commit" in bad.stderr

    plain = tmp_path / "plain"
    (plain / ".git").mkdir(parents=True)
    (plain / ".git" / "HEAD").write_text("not a repository")
    (plain / "x.py").write_text("")
    result = pack(plain, tmp_path / "plain.tar.gz")
    assert result.returncode == 0, result.stderr
    assert names(tmp_path / "plain.tar.gz") == ["x.py"]
