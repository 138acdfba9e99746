"""Tiny random Hugging Face checkpoints, built locally with transformers + PyTorch."""

from __future__ import annotations

import os

_BASE = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# One entry per family variant; each exercises what makes that family different.
FAMILY_CONFIGS: dict[str, dict] = {
    "llama2": dict(_BASE, model_type="llama", tie_word_embeddings=False, rms_norm_eps=1e-5),
    "llama3": dict(
        _BASE,
        model_type="llama",
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "mistral": dict(_BASE, model_type="mistral", sliding_window=5, tie_word_embeddings=False),
    "qwen2": dict(_BASE, model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(_BASE, model_type="qwen3", head_dim=24, tie_word_embeddings=False),
    "gemma": dict(_BASE, model_type="gemma", head_dim=24, hidden_act="gelu_pytorch_tanh"),
    "gemma2": dict(
        _BASE,
        model_type="gemma2",
        num_hidden_layers=4,
        head_dim=24,
        query_pre_attn_scalar=20,
        sliding_window=5,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,
    ),
    "gemma3": dict(
        _BASE,
        model_type="gemma3_text",
        num_hidden_layers=6,
        head_dim=24,
        query_pre_attn_scalar=20,
        sliding_window=5,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        rope_local_base_freq=10000.0,
        rope_theta=1000000.0,
    ),
}


def build_hf_model(
    name: str, out_dir: str, seed: int = 0, std: float = 0.15, head: str = "causal_lm", **overrides
):
    """Save a random model whose weights are large enough that every part matters.

    head: "causal_lm" or "sequence_classification"; overrides change config.json keys.
    """
    import torch
    import transformers

    cfg = dict(FAMILY_CONFIGS[name], **overrides)
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    auto = {
        "causal_lm": transformers.AutoModelForCausalLM,
        "sequence_classification": transformers.AutoModelForSequenceClassification,
    }[head]
    model = auto.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if "gemma" in model_type else 1.0))
            else:
                p.normal_(0.0, std)
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    return model
