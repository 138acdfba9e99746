import os
import sys

import pytest
from hub_server import TOKEN, point_clients_at, running_hub

# The tiny-model and training helpers of tests/train.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "train"))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub on 127.0.0.1 with this process's clients (and the processes a test starts)
    pointed at it and at an empty cache under `tmp_path/hf-home`."""
    with running_hub() as server:
        point_clients_at(monkeypatch, server.url, str(tmp_path / "hf-home"))
        yield server


@pytest.fixture
def token(monkeypatch):
    """Authenticates this process's clients (HF_TOKEN) to the loopback Hub."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
def tiny_model(tmp_path):
    """A tiny Llama with its tokenizer (tests/train/trl_harness.py), plus files alignjax never reads."""
    pytest.importorskip("torch")
    from trl_harness import word_model

    model_dir = tmp_path / "tiny"
    word_model(model_dir)
    (model_dir / "pytorch_model.bin").write_bytes(b"pickled weights")
    (model_dir / "original").mkdir()
    (model_dir / "original" / "consolidated.00.pt").write_bytes(b"original weights")
    (model_dir / "README.md").write_text("# tiny\n")
    return str(model_dir)
