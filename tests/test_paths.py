"""The path layer: the same calls on a local directory and on a bucket (the storage emulator)
give the same answers; atomic writes leave the old object when the writer fails."""

import os
import uuid

import pytest

from alignjax.core import fileio, paths


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    bucket = request.getfixturevalue("gcs")
    return f"{bucket}/paths-{uuid.uuid4().hex[:8]}"


def test_names():
    assert paths.join("gs://b/run/", "checkpoints", "3") == "gs://b/run/checkpoints/3"
    assert paths.dirname("gs://b/run/metrics.jsonl") == "gs://b/run"
    assert paths.basename("gs://b/run/") == "run"
    assert paths.abspath("gs://b/run/") == "gs://b/run"
    assert paths.abspath("rel") == os.path.abspath("rel")
    assert paths.is_remote("gs://b") and not paths.is_remote("/tmp/x")


def test_write_list_read_move_remove(root):
    d = paths.join(root, "a")
    paths.makedirs(d)
    fileio.atomic_write_text(paths.join(d, "x.json"), '{"k": 1}')
    fileio.atomic_write_bytes(paths.join(d, "sub", "y.bin"), b"\x00\x01")
    assert paths.exists(paths.join(d, "x.json")) and paths.isfile(paths.join(d, "x.json"))
    assert paths.isdir(d) and paths.isdir(paths.join(d, "sub"))
    assert not paths.exists(paths.join(d, "missing"))
    assert paths.listdir(d) == ["sub", "x.json"] or sorted(paths.listdir(d)) == ["sub", "x.json"]
    assert paths.walk_files(d) == ["sub/y.bin", "x.json"]
    assert paths.read_text(paths.join(d, "x.json")) == '{"k": 1}'
    assert paths.getsize(paths.join(d, "sub", "y.bin")) == 2
    assert paths.glob(paths.join(d, "*.json")) == [paths.join(d, "x.json")]

    paths.append_text(paths.join(d, "log.jsonl"), "1\n")
    paths.append_text(paths.join(d, "log.jsonl"), "2\n")
    assert paths.read_text(paths.join(d, "log.jsonl")) == "1\n2\n"

    with paths.open(paths.join(d, "sub", "y.bin"), "rb") as f:  # ranged read
        f.seek(1)
        assert f.read(1) == b"\x01"

    paths.replace(paths.join(d, "sub"), paths.join(root, "moved"))
    assert not paths.exists(paths.join(d, "sub", "y.bin"))
    assert paths.walk_files(paths.join(root, "moved")) == ["y.bin"]
    paths.remove(paths.join(d, "x.json"))
    assert not paths.exists(paths.join(d, "x.json"))
    paths.rmtree(paths.join(root, "moved"))
    assert not paths.exists(paths.join(root, "moved", "y.bin"))


def test_failed_atomic_write_keeps_the_old_contents(root):
    target = paths.join(root, "state.json")
    fileio.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(target) as f:
            f.write("half of the new")
            raise RuntimeError("writer died")
    assert paths.read_text(target) == "old"


def test_local_copy_follows_changes(root, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNJAX_CACHE", str(tmp_path / "cache"))
    d = paths.join(root, "model")
    fileio.atomic_write_text(paths.join(d, "tokenizer.json"), "v1")
    fileio.atomic_write_text(paths.join(d, "model.safetensors"), "weights")
    local = paths.local_copy(d, names=["tokenizer.json"])
    if not paths.is_remote(root):
        assert local == d  # a local directory is used where it is
        return
    assert os.listdir(local) == ["tokenizer.json"]  # the weights stay in the bucket
    assert open(os.path.join(local, "tokenizer.json")).read() == "v1"
    fileio.atomic_write_text(paths.join(d, "tokenizer.json"), "v2-longer")
    again = paths.local_copy(d, names=["tokenizer.json"])
    assert open(os.path.join(again, "tokenizer.json")).read() == "v2-longer"
    single = paths.local_copy(paths.join(d, "model.safetensors"))
    assert open(single).read() == "weights"


def test_a_missing_filesystem_is_named():
    with pytest.raises(ImportError, match="nosuchscheme"):
        paths.exists("nosuchscheme://bucket/x")
