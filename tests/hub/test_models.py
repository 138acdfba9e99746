"""Models by Hub name (`alignjax.core.hub`), against the Hub server on 127.0.0.1."""

import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from hub_helpers import upload
from hub_server import TOKEN

from alignjax.convert.loading import ModelSection, load_model
from alignjax.core import hub as hub_lib


def test_a_hub_name_loads_the_same_weights_and_fetches_only_what_is_read(hub, tiny_model):
    commit = upload(tiny_model, "org/tiny")
    resolved = hub_lib.resolve("org/tiny", key="model.hf_path")
    assert resolved.repo_id == "org/tiny" and resolved.commit == commit
    fetched = sorted(os.listdir(resolved.local_dir))
    assert "model.safetensors" in fetched and "config.json" in fetched and "tokenizer.json" in fetched
    assert not {"pytorch_model.bin", "original", "README.md", ".gitattributes"} & set(fetched), fetched
    assert hub.downloads("pytorch_model.bin") == 0 and hub.downloads("consolidated.00.pt") == 0

    from_hub = load_model(ModelSection(hf_path="org/tiny"), jax.random.key(0))
    local = load_model(ModelSection(hf_path=tiny_model), jax.random.key(0))
    assert from_hub.hub == resolved and local.hub is None
    jax.tree.map(np.testing.assert_array_equal, from_hub.params, local.params)
    assert from_hub.meta["hf_config"] == local.meta["hf_config"]


def test_a_revision_other_than_the_default_branch(hub, tiny_model, tmp_path):
    from trl_harness import word_model

    main_commit = upload(tiny_model, "org/tiny")
    other = word_model(tmp_path / "other", seed=1)
    dev_commit = upload(other, "org/tiny", revision="dev")
    assert dev_commit != main_commit

    on_dev = load_model(ModelSection(hf_path="org/tiny", revision="dev"), jax.random.key(0))
    assert on_dev.hub.commit == dev_commit
    pinned = load_model(ModelSection(hf_path="org/tiny", revision=main_commit), jax.random.key(0))
    assert pinned.hub.commit == main_commit
    jax.tree.map(
        np.testing.assert_array_equal,
        on_dev.params,
        load_model(ModelSection(hf_path=other), jax.random.key(0)).params,
    )
    with pytest.raises(AssertionError):
        jax.tree.map(np.testing.assert_array_equal, on_dev.params, pinned.params)


def test_a_local_directory_named_like_a_repository_wins_and_says_so(
    hub, tiny_model, tmp_path, monkeypatch, caplog
):
    upload(tiny_model, "org/tiny")
    (tmp_path / "work" / "org").mkdir(parents=True)
    os.symlink(tiny_model, tmp_path / "work" / "org" / "tiny")
    monkeypatch.chdir(tmp_path / "work")
    before = len(hub.requests)
    with caplog.at_level(logging.WARNING, logger="alignjax.hub"):
        assert hub_lib.resolve("org/tiny", key="model.hf_path") is None
    assert "model.hf_path=org/tiny: the local directory" in caplog.text and "write hf:org/tiny" in caplog.text
    assert len(hub.requests) == before  # the Hub was not asked
    # `hf:` asks for the Hub whatever lies on the disk.
    assert hub_lib.resolve("hf:org/tiny", key="model.hf_path").repo_id == "org/tiny"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("org/name", "org/name"),
        ("hf:org/name", "org/name"),
        ("hf:gpt2", "gpt2"),
        ("gs://bucket/org/name", None),
        ("runs/dpo/export", None),  # two slashes: a path
        ("./org/name", None),
        ("/abs/org", None),
        ("gpt2", None),  # one word: a path (hf:gpt2 for the Hub)
        ("org/../name", None),
    ],
)
def test_names_are_told_apart_without_guessing(name, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of these exist here
    assert hub_lib.repo_id_of(name, "model.hf_path") == expected


def _error(name, **options) -> str:
    with pytest.raises(hub_lib.HubError) as e:
        hub_lib.resolve(name, key="model.hf_path", **options)
    message = str(e.value)
    assert "\n" not in message, message
    return message


def test_errors_name_the_setting_the_repository_and_what_to_do(hub, tiny_model, monkeypatch, token):
    upload(tiny_model, "org/tiny")
    hub.put("org/gated", tiny_model, gated=True)
    hub.put("org/private", tiny_model, private=True)
    monkeypatch.delenv("HF_TOKEN")

    message = _error("org/missing")
    assert message.startswith("model.hf_path: model org/missing: ") and "no such repository" in message
    assert "no HF_TOKEN is set" in message and "set HF_TOKEN" in message

    message = _error("org/private")  # private without a token: the Hub does not tell it apart
    assert "model org/private" in message and "no such repository" in message

    message = _error("org/gated")
    assert message.startswith(
        "model.hf_path: model org/gated: the repository is gated and no HF_TOKEN is set"
    )
    assert f"{hub.url}/org/gated" in message

    message = _error("org/tiny", revision="v9")
    assert message.startswith("model.revision=v9: model org/tiny has no branch, tag or commit of that name")

    message = _error("./not-here", revision="dev")
    assert message.startswith("model.revision=dev: model.hf_path=./not-here is a local path or URL")

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # with a token, the gated and private ones download
    assert hub_lib.resolve("org/gated", key="model.hf_path").repo_id == "org/gated"
    assert hub_lib.resolve("org/private", key="model.hf_path").repo_id == "org/private"


def test_offline_reads_the_cache_and_says_what_to_do_without_it(hub, tiny_model, monkeypatch):
    import huggingface_hub.constants as hf_constants

    commit = upload(tiny_model, "org/tiny")
    online = hub_lib.resolve("org/tiny", key="model.hf_path")
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    offline = hub_lib.resolve("org/tiny", key="model.hf_path")
    assert offline == online and offline.commit == commit
    assert hub_lib.resolve("org/tiny", revision=commit, key="model.hf_path") == online

    message = _error("org/other")
    assert message.startswith(
        "model.hf_path: model org/other: HF_HUB_OFFLINE is set and the files are not in the cache"
    )
    assert "run once with network" in message

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # no network, nothing cached
    message = _error("org/other")
    assert "cannot be reached and the files are not in the cache" in message


_READ = """
import os, sys, hashlib
from alignjax.core import hub
resolved = hub.resolve("org/tiny", key="model.hf_path")
for name in sorted(os.listdir(resolved.local_dir)):
    with open(os.path.join(resolved.local_dir, name), "rb") as f:
        print(name, hashlib.sha256(f.read()).hexdigest())
"""


def test_two_processes_read_one_hub_model_through_one_cache(hub, tiny_model):
    upload(tiny_model, "org/tiny")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _READ],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert outputs[0][0] == outputs[1][0] and "model.safetensors" in outputs[0][0]
    import hashlib

    with open(os.path.join(tiny_model, "model.safetensors"), "rb") as f:
        assert f"model.safetensors {hashlib.sha256(f.read()).hexdigest()}" in outputs[0][0]
    # One download of each file: the second process waited, then found them cached.
    assert hub.downloads("/model.safetensors") == 1
    assert hub.downloads("/config.json") == 1
