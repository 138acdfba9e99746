"""The small MO-ODPO online source the online tests share: a one-layer random model,
prompts rendered under a weights template, and two rewards (brevity against the letter "o")."""

import json

import jax

from alignjax.data.byte_tokenizer import VOCAB_SIZE, make_byte_tokenizer
from alignjax.data.config import DataConfig, SourceConfig, TemplateConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.models import decoder
from alignjax.models.families import model_config_from_hf
from alignjax.models.presets import preset_config
from alignjax.online.mo_odpo import MOODPOSection, OnlinePairSource

TEMPLATE = "Weights: short {short:.0%}, ok {ok:.0%}."
REWARDS = [
    {"name": "length", "unit": "chars", "target": 0, "scale": 0.1},
    {"name": "keyword_count", "keywords": ["o"], "cap": 3},
]


def tiny_model():
    """(cfg, params) of a random one-layer model over the byte vocabulary."""
    cfg = model_config_from_hf(
        preset_config(
            "tiny", vocab_size=VOCAB_SIZE, num_hidden_layers=1, hidden_size=32, intermediate_size=64
        )
    )
    return cfg, decoder.init_params(cfg, jax.random.key(0))


def write_prompts(path, topics):
    path.write_text("".join(json.dumps({"prompt": f"Say something about {w}."}) + "\n" for w in topics))
    return str(path)


def prompt_data_cfg(path, **kw):
    return DataConfig(
        sources=[SourceConfig(path=str(path))],
        record_type="prompt",
        batch_size=4,
        max_length=128,
        max_prompt_length=96,
        shuffle=False,
        num_epochs=None,
        templates=TemplateConfig(weights=TEMPLATE),
        **kw,
    )


def make_source(model, path, seed=0, **section_kw):
    """(OnlinePairSource, tokenizer): 3 samples of up to 12 tokens per prompt at T=1, weights
    on a 0.25 grid; `section_kw` overrides or adds loss.mo_odpo fields."""
    cfg, _ = model
    tok = make_byte_tokenizer()
    dcfg = prompt_data_cfg(path)
    section = MOODPOSection(
        **{
            "rewards": REWARDS,
            "num_samples": 3,
            "max_new_tokens": 12,
            "temperature": 1.0,
            "grid": 4,
            **section_kw,
        }
    )
    pair_cfg = DataConfig(**{**dcfg.__dict__, "record_type": "preference"})
    source = OnlinePairSource(
        make_pipeline(dcfg, tok),
        pair_cfg,
        tok,
        cfg,
        section,
        seed=seed,
        per_host_batch=4,
        pad_id=tok.pad_token_id,
    )
    return source, tok


def pair_texts(batch, tok, i):
    """Pair i's chosen and rejected answers, decoded from their response tokens."""
    texts = []
    for row in (i, batch.num_pairs + i):
        ids = batch.tokens_BxL[row][batch.loss_mask_BxL[row] == 1]
        texts.append(tok.decode([t for t in ids if t != tok.eos_token_id], skip_special_tokens=True))
    return texts


def prompt_text(batch, tok, i):
    """Pair i's rendered prompt."""
    prompt_ids = batch.tokens_BxL[i][(batch.segment_ids_BxL[i] > 0) & (batch.loss_mask_BxL[i] == 0)]
    return tok.decode(prompt_ids.tolist())
