"""The id vocabulary: stable, order-independent, saved and loaded with the run."""

import pytest

from alignjax.data.vocab import Vocab


def test_indices_depend_only_on_the_set_of_keys(tmp_path):
    a = Vocab(["bob", "7", "alice", "bob"], "user_id")
    b = Vocab(["alice", "bob", "7"], "user_id")
    assert (
        [a.index(k) for k in ("7", "alice", "bob")]
        == [1, 2, 3]
        == [b.index(k) for k in ("7", "alice", "bob")]
    )
    assert a.index(7) == 1  # int and str ids name the same user
    assert a.index("zoe") == 0 and a.index(None) == 0
    path = str(tmp_path / "run" / "users.json")
    a.save(path)
    loaded = Vocab.load(path)
    assert loaded.keys == a.keys and loaded.kind == "user_id" and len(loaded) == 3


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a vocabulary file"):
        Vocab.load(str(path))
