"""QLoRA's quantized base: blockwise NF4 / int8 against a float64 NumPy reference, the
decoder on a quantized base equal to the decoder on its dequantized weights, shardings,
and the adapters' dropout."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_models import FAMILY_CONFIGS

from alignjax.core import sharding
from alignjax.models import decoder, lora, quantize
from alignjax.models.families import model_config_from_hf
from alignjax.models.layers import Projection

NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)


def _reference_dequantized(kernel, kind, n_out, block):
    """Blockwise absmax quantization in float64, blocks of `block` consecutive features of
    the last input axis, for each position of every other axis."""
    w = np.asarray(kernel, np.float64)
    q = w.ndim - n_out - 1
    moved = np.moveaxis(w, q, -1)  # [..., in_last]
    blocks = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // block, block))
    absmax = np.abs(blocks).max(axis=-1, keepdims=True)
    absmax = np.where(absmax > 0, absmax, 1.0)
    # The ratio in float32, as the quantizer forms it (a float64 ratio can fall on the other
    # side of a rounding boundary); the levels and rounding in float64.
    normed = blocks.astype(np.float32) / absmax.astype(np.float32)
    if kind == "nf4":
        nearest = np.abs(normed.astype(np.float64)[..., None] - NF4).argmin(axis=-1)
        values = NF4[nearest]
    else:
        values = np.clip(np.round((normed * np.float32(127)).astype(np.float64)), -127, 127) / 127
    out = (values * absmax).reshape(moved.shape)
    return np.moveaxis(out, -1, q)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize(
    "shape, n_out",
    [((128, 4, 32), 2), ((3, 4, 32, 128), 1), ((256, 96), 1), ((2, 64, 2, 16), 2)],
    ids=["q", "o-scanned", "down", "k-scanned"],
)
def test_blockwise_quantization_matches_a_float64_reference(kind, shape, n_out):
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.02, shape).astype(np.float32)
    kernel.reshape(-1)[:40] = 0.0  # an all-zero block somewhere keeps zeros
    qt = jax.jit(lambda k: quantize.quantize(k, kind, n_out))(kernel)
    assert qt.shape == shape
    got = np.asarray(qt.dequantize(jnp.float32), np.float64)
    block = quantize.block_size(shape[len(shape) - n_out - 1])
    expected = _reference_dequantized(kernel, kind, n_out, block)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7 * np.abs(kernel).max())
    # Storage: 4 or 8 bits per weight plus one float32 scale per block.
    per_weight = 0.5 if kind == "nf4" else 1.0
    assert qt.codes.nbytes == kernel.size * per_weight
    assert qt.scales.nbytes == kernel.size // block * 4
    # And a quantizer, not an identity: the error is that of 16 or 255 levels.
    rel = np.abs(got - kernel).max() / np.abs(kernel).max()
    assert (0.01 < rel < 0.2) if kind == "nf4" else (1e-4 < rel < 1e-2), rel


def test_nf4_equals_bitsandbytes():
    """The same NF4 values as bitsandbytes' quantize_4bit / dequantize_4bit (blocksize 64),
    bit for bit, on a torch Linear weight [out, in] (our kernel is its transpose)."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(0)
    weight = torch.randn(96, 320) * 0.02
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    expected = bnb.dequantize_4bit(packed, state, quant_type="nf4").numpy()
    qt = quantize.quantize(jnp.asarray(weight.numpy().T), "nf4", 1)
    np.testing.assert_array_equal(np.asarray(qt.dequantize(jnp.float32)).T, expected)
    assert qt.codes.nbytes == packed.numel()  # two codes per byte, as bitsandbytes packs them


def _cfg(family="llama3", scan=True, **execution):
    return model_config_from_hf(dict(FAMILY_CONFIGS[family]), scan_layers=scan, **execution)


_apply = jax.jit(decoder.apply, static_argnums=1)


def _inputs():
    tokens = jnp.array([[5, 9, 11, 3, 7, 2, 8, 1], [4, 4, 6, 10, 12, 13, 0, 0]]) + 3
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
    segments = jnp.array([[1] * 8, [1] * 6 + [0] * 2])
    return tokens, positions, segments


@pytest.mark.parametrize(
    "model_type, scan, kind",
    [("llama3", True, "nf4"), ("gemma2", False, "int8")],
)
def test_decoder_on_a_quantized_base_equals_it_on_the_dequantized_weights(kind, scan, model_type):
    cfg = _cfg(model_type, scan, lora_rank=4, lora_targets=("q", "v", "down"), lora_scale=2.0)
    params = decoder.init_params(cfg, jax.random.key(0))
    adapters = jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(1), x.shape) * 0.1,
        decoder.init_adapters(cfg, jax.random.key(2)),
    )
    frozen = jax.jit(lambda p: quantize.frozen(p, kind, jnp.float32))(params)
    assert quantize.is_quantized(frozen) and not quantize.is_quantized(params)
    # Only projection kernels are quantized; embeddings and norms are kept as they were.
    np.testing.assert_array_equal(frozen["embedding"], params["embedding"])
    dequantized = quantize.dequantize_tree(frozen, jnp.float32)
    args = _inputs()
    # Base and adapters together: the base's own matmuls and the adapters' share both pass.
    got = _apply(lora.Adapted(frozen, adapters), cfg, *args)
    want = _apply(lora.Adapted(dequantized, adapters), cfg, *args)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    # ... and differs from the full-precision base by a quantization error, not more.
    full = _apply(lora.Adapted(params, adapters), cfg, *args)
    # (Relative to the hidden states' scale: about 0.1-0.3 for NF4, 0.01-0.02 for int8 here.)
    err = float(jnp.max(jnp.abs(got - full)) / jnp.max(jnp.abs(full)))
    assert 0 < err < (0.5 if kind == "nf4" else 0.05), err


def test_quantized_base_shards_along_the_kernels_axes():
    cfg = _cfg(scan=True)
    axes = quantize.frozen_axes(decoder.logical_axes(cfg), "nf4")
    q = axes["layers"]["q"]["kernel"]
    assert isinstance(q, quantize.QTensor)
    # [layers, D/64 blocks, 32 bytes, heads, head_dim]: the blocks take the embed axis's place.
    assert tuple(q.codes) == ("layers", "embed", None, "q_heads", "head_dim")
    assert tuple(axes["layers"]["o"]["kernel"].scales) == ("layers", "q_heads", "head_dim", None, "embed")
    shapes = jax.eval_shape(
        lambda: quantize.frozen(decoder.init_params(cfg, jax.random.key(0)), "nf4", jnp.bfloat16)
    )
    mesh = jax.sharding.Mesh(
        np.asarray(jax.devices()[:1]).reshape((1,) * len(sharding.MESH_AXES)), sharding.MESH_AXES
    )
    shardings = sharding.tree_shardings(axes, shapes, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(shapes)
    assert shapes["embedding"].dtype == jnp.bfloat16
    assert shapes["layers"]["q"]["kernel"].codes.dtype == jnp.uint8


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="quantize_base='fp4'"):
        quantize.quantize(jnp.ones((64, 8)), "fp4", 1)


def test_adapter_dropout_masks_the_adapter_input_only_in_training():
    """PEFT: y = x W + B(A(dropout(x))) * scale. With A = I, B = I and scale 1 the adapter's
    share of the output is dropout(x) itself: zeros and x / (1 - p)."""
    rate = 0.25
    cfg = _cfg(scan=False, lora_rank=64, lora_targets=("gate",), lora_scale=1.0, lora_dropout=rate)
    gate = Projection(cfg, (64,), (64,), ("embed",), ("mlp",), name="gate")
    x = jax.random.normal(jax.random.key(3), (4, 8, 64)) + 3.0  # no exact zeros in x
    variables = jax.tree.map(nn_unbox, gate.init(jax.random.key(0), x), is_leaf=_boxed)
    variables["lora"] = {"a": jnp.eye(64), "b": jnp.eye(64)}
    base = x @ variables["params"]["kernel"]
    deterministic = gate.apply(variables, x) - base
    np.testing.assert_allclose(deterministic, x, atol=1e-5)
    dropped = gate.apply(variables, x, rngs={lora.DROPOUT_RNG: jax.random.key(4)}) - base
    ratio = np.asarray(dropped / x)
    kept = np.isclose(ratio, 1 / (1 - rate), atol=1e-4)
    zeroed = np.isclose(ratio, 0.0, atol=1e-4)
    assert np.all(kept | zeroed)
    assert abs(zeroed.mean() - rate) < 0.03, zeroed.mean()
    # Off at rate 0 even with a key.
    gate0 = Projection(dataclasses.replace(cfg, lora_dropout=0.0), (64,), (64,), ("embed",), ("mlp",))
    np.testing.assert_array_equal(
        gate0.apply(variables, x, rngs={lora.DROPOUT_RNG: jax.random.key(4)}), gate0.apply(variables, x)
    )


def _boxed(x):
    return isinstance(x, nn.Partitioned)


def nn_unbox(x):
    return x.unbox() if _boxed(x) else x


def test_policy_dropout_key_reaches_every_scanned_layer():
    cfg = _cfg(scan=True, lora_rank=4, lora_targets=("q", "v"), lora_scale=2.0, lora_dropout=0.5)
    params = decoder.init_params(cfg, jax.random.key(0))
    adapters = jax.tree.map(lambda x: jnp.ones_like(x) * 0.1, decoder.init_adapters(cfg, jax.random.key(1)))
    args = _inputs()
    off = _apply(lora.Adapted(params, adapters), cfg, *args)
    on_a = _apply(lora.Adapted(params, adapters, jax.random.key(5)), cfg, *args)
    on_b = _apply(lora.Adapted(params, adapters, jax.random.key(6)), cfg, *args)
    again = _apply(lora.Adapted(params, adapters, jax.random.key(5)), cfg, *args)
    assert float(jnp.max(jnp.abs(on_a - off))) > 1e-3
    assert float(jnp.max(jnp.abs(on_a - on_b))) > 1e-3
    np.testing.assert_array_equal(on_a, again)


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_kv_cache_decoding_on_a_quantized_base_equals_the_dequantized_weights(scan):
    """Sampling (MO-ODPO, online CUT, generate) runs the cached path, layer by layer."""
    cfg = _cfg(scan=scan, lora_rank=4, lora_targets=("q", "v"), lora_scale=2.0)
    params = decoder.init_params(cfg, jax.random.key(0))
    adapters = jax.tree.map(lambda x: jnp.ones_like(x) * 0.05, decoder.init_adapters(cfg, jax.random.key(1)))
    frozen = quantize.frozen(params, "nf4", jnp.float32)
    tokens = jnp.array([[5, 9, 11, 3, 7, 2]])
    positions, segments = jnp.arange(6)[None], jnp.ones_like(tokens)
    hidden = []
    for base in (frozen, quantize.dequantize_tree(frozen, jnp.float32)):
        cache = decoder.init_cache(cfg, 1, 16)
        h, _ = decoder.apply_with_cache(lora.Adapted(base, adapters), cfg, tokens, positions, segments, cache)
        hidden.append(h)
    np.testing.assert_allclose(hidden[0], hidden[1], rtol=0, atol=1e-6)


def _np_logits_errors(full_BxLxV, quant_BxLxV) -> dict[str, float]:
    """`alignjax bench quantize`'s numbers in float64 NumPy."""
    full, quant = (np.asarray(x, np.float64) for x in (full_BxLxV, quant_BxLxV))
    err = np.abs(quant - full)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    logp_full, logp_quant = log_softmax(full), log_softmax(quant)
    return {
        "mean_abs_logit_error": err.mean(),
        "mean_abs_error_over_logit_std": err.mean() / full.std(),
        "mean_next_token_kl": (np.exp(logp_full) * (logp_full - logp_quant)).sum(-1).mean(),
        "top1_agreement": (full.argmax(-1) == quant.argmax(-1)).mean(),
    }


def test_bench_quantize_measures_on_the_tokenized_text_first_then_random_ids():
    from alignjax.commands.bench_quantize import measure
    from alignjax.convert.loading import ModelSection, load_model
    from alignjax.data.byte_tokenizer import BOS_ID, make_byte_tokenizer
    from alignjax.models import head

    text = "The kettle on the stove began to whistle, so she poured the tea and sat by the window."
    length, rows = 32, 2
    section = ModelSection(preset="tiny", preset_overrides={"num_hidden_layers": 2})
    loaded = load_model(section, jax.random.key(0))
    report = measure(loaded, make_byte_tokenizer(), text, "--text-file t.txt", ["nf4"], rows, length, seed=0)
    assert list(report) == ["text", "random_ids"]
    assert report["text"]["tokens_from"] == "--text-file t.txt"
    assert report["random_ids"]["tokens_from"].startswith("uniformly random token ids")

    # The same measurement made directly: a preset reads text with the byte tokenizer, which
    # puts BOS first; random ids are drawn from the seed over the model's vocabulary.
    cfg, params = loaded.cfg, loaded.params
    text_1xL = np.asarray([make_byte_tokenizer()(text)["input_ids"][:length]])
    assert text_1xL[0, 0] == BOS_ID and bytes(text_1xL[0, 1:].astype(np.uint8)).decode() == text[: length - 1]
    random_BxL = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(rows, length))
    frozen = jax.jit(lambda p: quantize.frozen(p, "nf4", jnp.float32))(params)
    logits = jax.jit(lambda p, t: head.logits_BxLxV(p, cfg, decoder.apply(p, cfg, t, *_positions(t))))
    for line, tokens_BxL in ((report["text"], text_1xL), (report["random_ids"], random_BxL)):
        (got,) = line["results"]
        assert got["kind"] == "nf4" and got["tokens"] == tokens_BxL.size
        want = _np_logits_errors(logits(params, tokens_BxL), logits(frozen, tokens_BxL))
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-3, err_msg=name)


def _positions(tokens_BxL):
    b, length = tokens_BxL.shape
    return jnp.broadcast_to(jnp.arange(length), (b, length)), jnp.ones((b, length), jnp.int32)


def test_bench_quantize_names_an_unreadable_or_too_short_text_file(tmp_path, capsys):
    from alignjax import cli

    base = ["bench", "quantize", "--preset", "tiny", "--override", "num_hidden_layers=1", "--kinds", "nf4"]
    missing = tmp_path / "missing.txt"
    assert cli.main([*base, "--text-file", str(missing)]) == 2
    assert f"--text-file {missing}: cannot be read as UTF-8 text" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    assert cli.main([*base, "--text-file", str(short), "--length", "64"]) == 2
    assert (
        f"--text-file {short} is 11 tokens long under the model's tokenizer, too short for --length 64"
        in (capsys.readouterr().err)
    )
