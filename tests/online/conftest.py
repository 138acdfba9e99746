"""Tiny random Hugging Face models, built once per session and shared by the online tests."""

import functools

import pytest

from alignjax.convert.api import load_hf_model
from hf_models import FAMILY_CONFIGS, build_hf_model


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
    import torch
    import transformers

    from alignjax.data.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, make_byte_tokenizer

    cfg = dict(FAMILY_CONFIGS[name], vocab_size=VOCAB_SIZE + 1, pad_token_id=PAD_ID,
               bos_token_id=BOS_ID, eos_token_id=EOS_ID, num_labels=num_labels)
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    with torch.no_grad():
      for pname, p in model.named_parameters():
        if "norm" in pname:
          p.copy_(torch.randn_like(p) * 0.3 + (0.0 if "gemma" in model_type else 1.0))
        else:
          p.normal_(0.0, std)
    model.eval()
    path = str(tmp_path_factory.mktemp(f"{name}_rm"))
    model.save_pretrained(path)
    make_byte_tokenizer().save_pretrained(path)
    return path, model

  return build
