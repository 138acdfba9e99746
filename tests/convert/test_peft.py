"""LoRA adapters <-> PEFT, checked against PEFT itself: same logits both ways, same merge."""

import functools
import json
import os

import jax
import numpy as np
import peft
import pytest
import torch
import transformers

from hf_models import FAMILY_CONFIGS, build_hf_model
from alignjax.convert import peft as peft_io
from alignjax.convert.api import load_hf_model
from alignjax.convert.hf import tensors_from_params
from alignjax.models import decoder, head, lora

L = 12  # longer than the test sliding windows (5)
TOL = 1e-4
RANK, ALPHA = 4, 8
ALL_TARGETS = list(lora.HF_TO_PROJECTION)


@functools.lru_cache(maxsize=None)
def _forward(cfg):
    def f(params, tokens, positions, segment_ids):
        return head.logits_BxLxV(params, cfg, decoder.apply(params, cfg, tokens, positions, segment_ids))

    return jax.jit(f)


def _logits(params, cfg, tokens):
    positions = np.broadcast_to(np.arange(L), tokens.shape)
    return np.asarray(_forward(cfg)(params, tokens, positions, np.ones(tokens.shape, np.int32)))


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


def _tokens(cfg):
    return np.random.default_rng(1).integers(3, cfg.vocab_size, size=(2, L))


def _hf_base(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32
    ).eval()


def _peft_model(path, rslora=False):
    """PEFT's LoRA on every projection, A and B both random (init_lora_weights=False)."""
    torch.manual_seed(7)
    config = peft.LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=ALL_TARGETS,
        use_rslora=rslora,
        lora_dropout=0.05,  # read back as model.lora.dropout; off in eval, so logits are unaffected
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(_hf_base(path), config).eval()


def _with_lora(cfg, rank=RANK, alpha=ALPHA, rslora=False, targets=ALL_TARGETS):
    return cfg.replace(
        lora_rank=rank,
        lora_targets=tuple(lora.HF_TO_PROJECTION[t] for t in targets),
        lora_scale=lora.scale(alpha, rank, rslora),
    )


def _random_adapters(cfg, seed=0):
    """Adapters with B nonzero, so they change the model."""
    rng = np.random.default_rng(seed)
    shapes = peft_io.adapter_shapes(cfg)
    return jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.2).astype(np.float32), shapes)


def _numpy(state_dict):
    return {k: v.detach().numpy() for k, v in state_dict.items()}


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def family(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    build_hf_model(request.param, path)
    # Gemma families run scanned, the rest unscanned: both adapter layouts meet PEFT.
    cfg, params, meta = load_hf_model(path, scan_layers=request.param.startswith("gemma"))
    return path, cfg, params, meta


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_peft_adapter_imports_to_the_same_logits(family, rslora, tmp_path):
    path, cfg, params, _ = family
    model = _peft_model(path, rslora)
    model.save_pretrained(str(tmp_path))
    adapter_config, tensors = peft_io.read_peft_adapter(str(tmp_path))
    settings = peft_io.lora_settings_from_peft(adapter_config)
    assert settings == {
        "rank": RANK,
        "alpha": ALPHA,
        "rslora": rslora,
        "dropout": 0.05,
        "targets": ("q", "k", "v", "o", "gate", "up", "down"),
    }
    lora_cfg = _with_lora(cfg, settings["rank"], settings["alpha"], settings["rslora"])
    adapters = peft_io.adapters_from_peft_tensors(tensors, lora_cfg)

    tokens = _tokens(cfg)
    expected = _torch_logits(model, tokens)
    # The adapter matters, so a dropped or misplaced tensor cannot pass.
    assert np.abs(expected - _logits(params, cfg, tokens)).max() > 0.1
    np.testing.assert_allclose(
        _logits(lora.Adapted(params, adapters), lora_cfg, tokens), expected, atol=TOL, rtol=0
    )

    # Our export names and lays out every tensor exactly as PEFT's state dict does.
    saved = _numpy(peft.get_peft_model_state_dict(model))
    exported = peft_io.adapters_to_peft_tensors(adapters, lora_cfg)
    assert sorted(exported) == sorted(saved)
    for key, value in saved.items():
        assert exported[key].shape == value.shape and np.array_equal(exported[key], value), key


def test_exported_adapter_loads_in_peft_with_the_same_logits(family, tmp_path):
    path, cfg, params, _ = family
    targets = ["q_proj", "v_proj", "o_proj", "down_proj"]  # a subset: untargeted ones stay plain
    lora_cfg = _with_lora(cfg, targets=targets)
    adapters = _random_adapters(lora_cfg)
    written = peft_io.write_peft_adapter(
        str(tmp_path),
        adapters,
        lora_cfg,
        rank=RANK,
        alpha=ALPHA,
        rslora=False,
        target_modules=targets,
        base_model_name_or_path=path,
    )
    assert sorted(written) == sorted(os.listdir(tmp_path))

    model = peft.PeftModel.from_pretrained(_hf_base(path), str(tmp_path)).eval()
    assert model.peft_config["default"].r == RANK and model.peft_config["default"].lora_alpha == ALPHA
    tokens = _tokens(cfg)
    logits = _logits(lora.Adapted(params, adapters), lora_cfg, tokens)
    assert np.abs(logits - _logits(params, cfg, tokens)).max() > 0.1
    np.testing.assert_allclose(logits, _torch_logits(model, tokens), atol=TOL, rtol=0)


def test_merge_equals_peft_merge_and_unload(family):
    path, cfg, params, meta = family
    model = _peft_model(path)
    lora_cfg = _with_lora(cfg)
    adapters = peft_io.adapters_from_peft_tensors(_numpy(peft.get_peft_model_state_dict(model)), lora_cfg)
    merged_hf = model.merge_and_unload()

    before = jax.tree.map(np.copy, params)
    merged = peft_io.merge_adapters(params, adapters, lora_cfg)
    assert all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(params), strict=True)
    )
    # The merged kernels, through the export path, are PEFT's merged weights.
    hf_state = _numpy(merged_hf.state_dict())
    for name, array in tensors_from_params(cfg, merged, meta["hf_tensor_dtypes"], "float32"):
        np.testing.assert_allclose(array, hf_state[name], atol=1e-6, rtol=0, err_msg=name)
    # Merged weights alone (no adapters) give the adapted model's logits.
    tokens = _tokens(cfg)
    expected = _torch_logits(merged_hf, tokens)
    np.testing.assert_allclose(_logits(merged, cfg, tokens), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(
        _logits(lora.Adapted(params, adapters), lora_cfg, tokens), expected, atol=TOL, rtol=0
    )


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """head_dim (24) != hidden / heads, so a wrong head reshape shows."""
    path = str(tmp_path_factory.mktemp("qwen3"))
    build_hf_model("qwen3", path)
    return path


def _config(path, scan_layers, **lora_kwargs):
    cfg, params, _ = load_hf_model(path, scan_layers=scan_layers)
    return _with_lora(cfg, **lora_kwargs), params


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])
def test_round_trip_is_exact(qwen3, scan_layers, tmp_path):
    cfg, _ = _config(qwen3, scan_layers, rslora=True)
    adapters = _random_adapters(cfg)
    back = peft_io.adapters_from_peft_tensors(peft_io.adapters_to_peft_tensors(adapters, cfg), cfg)
    assert jax.tree.structure(back) == jax.tree.structure(adapters)
    for ours, again in zip(jax.tree.leaves(adapters), jax.tree.leaves(back), strict=True):
        assert again.dtype == ours.dtype and np.array_equal(again, ours)

    # Through the files too, with rsLoRA's scale recorded.
    kwargs = dict(rank=RANK, alpha=ALPHA, rslora=True, target_modules=ALL_TARGETS)
    peft_io.write_peft_adapter(str(tmp_path), adapters, cfg, base_model_name_or_path=None, **kwargs)
    adapter_config, tensors = peft_io.read_peft_adapter(str(tmp_path))
    settings = peft_io.lora_settings_from_peft(adapter_config)
    assert lora.scale(settings["alpha"], settings["rank"], settings["rslora"]) == cfg.lora_scale == ALPHA / 2
    back = peft_io.adapters_from_peft_tensors(tensors, cfg)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(adapters), jax.tree.leaves(back), strict=True)
    )


def test_scanned_and_unscanned_layouts_export_the_same_tensors(qwen3):
    unscanned, _ = _config(qwen3, False)
    scanned, _ = _config(qwen3, True)
    adapters = _random_adapters(unscanned)
    layers = [adapters[f"layers_{i}"] for i in range(unscanned.num_layers)]
    stacked = {"layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    a = peft_io.adapters_to_peft_tensors(adapters, unscanned)
    b = peft_io.adapters_to_peft_tensors(stacked, scanned)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def adapter_dir(qwen3, tmp_path):
    cfg, _ = _config(qwen3, False)
    peft_io.write_peft_adapter(
        str(tmp_path),
        _random_adapters(cfg),
        cfg,
        rank=RANK,
        alpha=ALPHA,
        rslora=False,
        target_modules=ALL_TARGETS,
        base_model_name_or_path=qwen3,
    )
    return tmp_path


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"target_modules": ["q_proj", "embed_tokens"]},
            r"target_modules=.*\['embed_tokens'\].*not supported",
        ),
        ({"target_modules": ["lm_head"]}, r"target_modules=.*\['lm_head'\]"),
        ({"target_modules": r".*\.q_proj"}, r"target_modules=.*regular expression"),
        ({"bias": "all"}, r"bias='all'.*biases"),
        ({"use_dora": True}, r"use_dora=True.*DoRA"),
        ({"modules_to_save": ["lm_head"]}, r"modules_to_save=\['lm_head'\]"),
        ({"rank_pattern": {"q_proj": 8}}, r"rank_pattern=.*per-module ranks"),
        ({"alpha_pattern": {"q_proj": 16}}, r"alpha_pattern=.*per-module alphas"),
        ({"fan_in_fan_out": True}, r"fan_in_fan_out=True"),
        ({"layers_to_transform": [0]}, r"layers_to_transform=\[0\].*some layers"),
        ({"init_lora_weights": "pissa"}, r"init_lora_weights='pissa'.*base weights"),
        ({"peft_type": "IA3"}, r"peft_type='IA3'.*only LoRA"),
        ({"trainable_token_indices": [5]}, r"trainable_token_indices=\[5\].*not supported"),
    ],
)
def test_unsupported_config_names_file_and_key(adapter_dir, changes, match):
    path = adapter_dir / peft_io.ADAPTER_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    with pytest.raises(ValueError, match=f"{peft_io.ADAPTER_CONFIG}: {match}"):
        peft_io.read_peft_adapter(str(adapter_dir))


def test_plain_suffixes_and_all_linear_are_supported(adapter_dir):
    path = adapter_dir / peft_io.ADAPTER_CONFIG
    config = json.loads(path.read_text())
    targets = peft_io.lora_settings_from_peft({**config, "target_modules": ["self_attn.v_proj", "up_proj"]})
    assert targets["targets"] == ("v", "up")
    assert peft_io.lora_settings_from_peft({**config, "target_modules": "all-linear"})["targets"] == (
        "q",
        "k",
        "v",
        "o",
        "gate",
        "up",
        "down",
    )


def test_tensor_errors_name_the_tensor(qwen3):
    cfg, _ = _config(qwen3, False)
    tensors = peft_io.adapters_to_peft_tensors(_random_adapters(cfg), cfg)
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"

    with pytest.raises(ValueError, match=f"missing tensors.*{key}"):
        peft_io.adapters_from_peft_tensors({k: v for k, v in tensors.items() if k != key}, cfg)
    extra = "base_model.model.lm_head.lora_A.weight"
    with pytest.raises(ValueError, match=f"unexpected tensor '{extra}'"):
        peft_io.adapters_from_peft_tensors({**tensors, extra: np.zeros((RANK, 64), np.float32)}, cfg)
    with pytest.raises(ValueError, match=rf"'{key}' has shape \(96, 8\).*rank 4 imply \(96, 4\)"):
        peft_io.adapters_from_peft_tensors({**tensors, key: np.zeros((96, 8), np.float32)}, cfg)
    with pytest.raises(ValueError, match="cfg has no adapters"):
        peft_io.adapters_from_peft_tensors(tensors, cfg.replace(lora_rank=0, lora_targets=()))


def test_write_refuses_settings_the_adapters_were_not_trained_with(qwen3, tmp_path):
    cfg, _ = _config(qwen3, False, targets=["q_proj", "v_proj"])
    adapters = _random_adapters(cfg)
    common = dict(base_model_name_or_path=None, target_modules=["q_proj", "v_proj"])
    with pytest.raises(ValueError, match="rank=8.*disagree.*lora_rank=4"):
        peft_io.write_peft_adapter(str(tmp_path), adapters, cfg, rank=8, alpha=ALPHA, rslora=False, **common)
    with pytest.raises(ValueError, match="rslora=True give scale 4.0.*lora_scale=2.0"):
        peft_io.write_peft_adapter(
            str(tmp_path), adapters, cfg, rank=RANK, alpha=ALPHA, rslora=True, **common
        )
    wrong = dict(common, target_modules=["q_proj", "k_proj"])
    with pytest.raises(ValueError, match="disagree"):
        peft_io.write_peft_adapter(
            str(tmp_path), adapters, cfg, rank=RANK, alpha=ALPHA, rslora=False, **wrong
        )
    assert not os.listdir(tmp_path)
