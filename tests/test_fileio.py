"""Atomic writes: the new contents or the old, never a mix, and no temp file left behind."""

import json
import os

import pytest

from alignjax.core import fileio


def _names(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_text_bytes_and_json_round_trip_and_create_the_directory(tmp_path):
    text_path, bytes_path, json_path = tmp_path / "a" / "t.txt", tmp_path / "b.bin", tmp_path / "c.json"
    fileio.atomic_write_text(str(text_path), "héllo\nwörld\n")
    fileio.atomic_write_bytes(str(bytes_path), b"\x00\xffabc")
    fileio.atomic_write_json(str(json_path), {"keys": ["ü", 1, 2.5, None]}, ensure_ascii=False, indent=1)
    assert text_path.read_text(encoding="utf-8") == "héllo\nwörld\n"
    assert bytes_path.read_bytes() == b"\x00\xffabc"
    assert json_path.read_text(encoding="utf-8") == '{\n "keys": [\n  "ü",\n  1,\n  2.5,\n  null\n ]\n}'
    assert _names(tmp_path) == ["a", "b.bin", "c.json"]
    assert _names(tmp_path / "a") == ["t.txt"]


def test_overwrite_replaces_the_whole_file(tmp_path):
    path = str(tmp_path / "state.json")
    fileio.atomic_write_json(path, {"step": 1, "long": "x" * 100})
    fileio.atomic_write_json(path, {"step": 2})
    with open(path) as f:
        assert json.load(f) == {"step": 2}


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "vocab.json"
    fileio.atomic_write_json(str(path), {"keys": ["a", "b"]})
    before = path.read_bytes()
    # json.dump streams: "{"keys": [" is written before it meets the object it cannot encode.
    with pytest.raises(TypeError, match="not JSON serializable"):
        fileio.atomic_write_json(str(path), {"keys": ["c", object()]})
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["vocab.json"]


def test_an_exception_inside_atomic_open_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.npz"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_open(str(path), "wb") as f:
            f.write(b"new, but cut short")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["table.npz"]


def test_temp_names_are_unique_per_write_in_the_target_directory(tmp_path, monkeypatch):
    opened = []
    real_open = open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy_open)
    for _ in range(2):
        fileio.atomic_write_text(str(tmp_path / "x.txt"), "x")
    first, second = opened
    assert first != second
    for name in (first, second):
        assert os.path.dirname(name) == str(tmp_path)
        assert os.path.basename(name).startswith(f"x.txt.tmp-{os.getpid()}-")


def test_unsupported_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with fileio.atomic_open(str(tmp_path / "x"), "a"):
            pass
