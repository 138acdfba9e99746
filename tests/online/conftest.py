"""Tiny random Hugging Face models, built once per session and shared by the online tests."""

import functools

import pytest

from alignjax.convert.api import load_hf_model
from hf_models import build_hf_model


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """name -> (hf_dir, torch model, cfg, params); call with scan_layers=True for stacked layers."""

    @functools.lru_cache(maxsize=None)
    def build(name: str):
        path = str(tmp_path_factory.mktemp(name))
        return path, build_hf_model(name, path)

    @functools.lru_cache(maxsize=None)
    def load(name: str, scan_layers: bool = False):
        path, hf_model = build(name)
        cfg, params, _ = load_hf_model(path, scan_layers=scan_layers)
        return path, hf_model, cfg, params

    return load


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """family name -> (hf_dir, torch *ForSequenceClassification model); byte tokenizer saved."""

    @functools.lru_cache(maxsize=None)
    def build(name: str, num_labels: int = 1, seed: int = 0, std: float = 0.15):
        from alignjax.data.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, make_byte_tokenizer

        path = str(tmp_path_factory.mktemp(f"{name}_rm"))
        model = build_hf_model(
            name,
            path,
            seed=seed,
            std=std,
            head="sequence_classification",
            vocab_size=VOCAB_SIZE + 1,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            num_labels=num_labels,
        )
        make_byte_tokenizer().save_pretrained(path)
        return path, model

    return build
