"""The paged decode-attention TPU kernel (through the Pallas interpreter) against the XLA
einsum over the slot-ordered cache, its layout, and when it is chosen."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_models import FAMILY_CONFIGS
from simulated_devices import run_on_8_devices

from alignjax.generation import sampler
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.models import attention, decode_attention, decoder, head, paged_cache
from alignjax.models.families import model_config_from_hf

DH = 128  # the kernel's smallest head_dim
# Rows at different lengths: one token, part of a page, a page boundary, into the second
# block of pages, the whole cache (10 pages of 64 in blocks of 5).
LENGTHS = (1, 37, 64, 333, 640)
SLOTS = 640


def _bf16_values(rng, shape):
    """float32 values bfloat16 represents exactly: the kernel reads keys and values as
    bfloat16, so on these it must equal the float32 einsum to float32 rounding."""
    return np.asarray(jnp.asarray(rng.normal(size=shape), jnp.bfloat16).astype(jnp.float32))


def _xla_reference(q_BxHxDh, keys, values, scale, softcap):
    """The XLA decode attention over a slot-ordered, left-padded cache holding the same rows:
    row b's tokens in its last LENGTHS[b] slots, padding slots full of large junk."""
    b, k, dh = len(LENGTHS), keys[0].shape[1], q_BxHxDh.shape[2]
    k_BxSxKxDh = np.full((b, SLOTS, k, dh), 50.0, np.float32)
    v_BxSxKxDh = np.full((b, SLOTS, k, dh), -50.0, np.float32)
    positions_BxS = np.zeros((b, SLOTS), np.int32)
    segment_ids_BxS = np.zeros((b, SLOTS), np.int32)
    for row, n in enumerate(LENGTHS):
        k_BxSxKxDh[row, SLOTS - n :], v_BxSxKxDh[row, SLOTS - n :] = keys[row], values[row]
        positions_BxS[row, SLOTS - n :] = np.arange(n)
        segment_ids_BxS[row, SLOTS - n :] = 1
    out_Bx1xHxDh = attention.attention(
        jnp.asarray(q_BxHxDh)[:, None],
        jnp.asarray(k_BxSxKxDh),
        jnp.asarray(v_BxSxKxDh),
        q_positions_BxL=jnp.asarray(LENGTHS, jnp.int32)[:, None] - 1,
        k_positions_BxS=jnp.asarray(positions_BxS),
        q_segment_ids_BxL=jnp.ones((b, 1), jnp.int32),
        k_segment_ids_BxS=jnp.asarray(segment_ids_BxS),
        scale=scale,
        softcap=softcap,
        backend="xla",
    )
    return np.asarray(out_Bx1xHxDh[:, 0])


@pytest.mark.parametrize(
    "heads,kv_heads,softcap", [(8, 2, None), (4, 4, None), (8, 2, 30.0)], ids=["gqa", "mha", "softcap"]
)
def test_kernel_equals_the_xla_decode_attention(heads, kv_heads, softcap):
    """A decode step over the paged cache (write, then the kernel) against the einsum over
    the slot-ordered cache holding the same rows."""
    rng = np.random.default_rng(heads + kv_heads)
    b, layers, layer = len(LENGTHS), 2, 1
    q_BxHxDh = rng.normal(size=(b, heads, DH)).astype(np.float32) * 2
    keys = [_bf16_values(rng, (n, kv_heads, DH)) for n in LENGTHS]
    values = [_bf16_values(rng, (n, kv_heads, DH)) for n in LENGTHS]
    # The paged layout holds all but each row's newest token; the other layer and every
    # unwritten slot hold junk the kernel must not read and the write must overwrite.
    k_NxBxKxSxDh = np.full((layers, b, kv_heads, SLOTS, DH), 50.0, np.float32)
    v_NxBxKxSxDh = np.full((layers, b, kv_heads, SLOTS, DH), -50.0, np.float32)
    for row, n in enumerate(LENGTHS):
        k_NxBxKxSxDh[layer, row, :, : n - 1] = keys[row][:-1].transpose(1, 0, 2)
        v_NxBxKxSxDh[layer, row, :, : n - 1] = values[row][:-1].transpose(1, 0, 2)
    lengths_B = jnp.asarray(LENGTHS, jnp.int32)
    cache = paged_cache.PagedLayerCache(
        jnp.asarray(k_NxBxKxSxDh), jnp.asarray(v_NxBxKxSxDh), layer, lengths_B[:, None] - 1, lengths_B
    )

    scale = DH**-0.5
    out, (k_all, _) = decode_attention.decode_step(
        cache,
        jnp.asarray(q_BxHxDh),
        jnp.asarray(np.stack([k[-1] for k in keys])),
        jnp.asarray(np.stack([v[-1] for v in values])),
        scale=scale,
        softcap=softcap,
        interpret=True,
    )
    expected = _xla_reference(q_BxHxDh, keys, values, scale, softcap)
    assert np.abs(expected).max() > 0.1 and np.abs(np.asarray(out)).max() < 10  # no junk leaked
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=0)
    for row, n in enumerate(LENGTHS):  # the new key landed in the row's slot, and nowhere else
        np.testing.assert_array_equal(np.asarray(k_all[layer, row, :, n - 1]), keys[row][-1])
        assert (np.asarray(k_all[layer, row, :, n:]) == 50.0).all()
    np.testing.assert_array_equal(np.asarray(k_all[0]), k_NxBxKxSxDh[0])


def test_pages_per_block_divide_the_row():
    assert [decode_attention.pages_per_block(p) for p in (1, 3, 10, 12, 16, 17)] == [1, 3, 5, 6, 8, 1]


def test_a_paged_cache_holds_each_token_at_its_position():
    """A left-padded prompt's padding is not written; decode tokens follow each row's own end."""
    cfg = _cfg()
    cache = paged_cache.init_paged_cache(cfg, 2, 5)
    assert cache.k_NxBxKxSxDh.shape == (cfg.num_layers, 2, cfg.num_kv_heads, paged_cache.PAGE_SIZE, DH)
    positions_BxL = jnp.asarray([[0, 0, 0, 1], [0, 1, 2, 3]])
    segment_ids_BxL = jnp.asarray([[0, 0, 1, 1], [1, 1, 1, 1]])
    slots_BxL, lengths_B = paged_cache.write_slots(cache, positions_BxL, segment_ids_BxL)
    np.testing.assert_array_equal(lengths_B, [2, 4])
    token_BxL = jnp.asarray([[9, 9, 1, 2], [3, 4, 5, 6]], jnp.float32)
    k_BxLxKxDh = jnp.broadcast_to(token_BxL[:, :, None, None], (2, 4, cfg.num_kv_heads, DH))
    layer_cache = paged_cache.PagedLayerCache(cache.k_NxBxKxSxDh, cache.v_NxBxKxSxDh, 1, slots_BxL, lengths_B)
    k_all, _ = paged_cache.write_layer(layer_cache, k_BxLxKxDh, k_BxLxKxDh)
    written_BxS = np.asarray(k_all[1, :, 0, :, 0], np.float32)
    np.testing.assert_array_equal(written_BxS[:, :5], [[1, 2, 0, 0, 0], [3, 4, 5, 6, 0]])
    assert not np.asarray(k_all[0], np.float32).any()


def _cfg(family="llama3", **overrides):
    return model_config_from_hf(
        dict(FAMILY_CONFIGS[family], head_dim=DH, **overrides), dtype="bfloat16", scan_layers=True
    )


def test_greedy_decode_through_the_kernel_equals_the_xla_path():
    """The whole sampler (prefill, then the decode loop with the kernel in every layer) on a
    tiny bfloat16 Llama with grouped-query heads, rows of three prompt lengths."""
    cfg = _cfg()
    params = decoder.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 96, size=n).tolist() for n in (3, 9, 13)]
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0, eos_ids=(2,), pad_id=0)
    paged_cfg = cfg.replace(decode_attention="paged_interpret")
    mesh = sampler.params_mesh(params)
    program = sampler.sampling_program(
        paged_cfg, greedy, mesh, sampler.params_layout(params, mesh), 3, 16, "threefry2x32"
    )
    assert isinstance(program.state_shapes.cache, decoder.PagedKVCache)
    xla = sampler.generate(params, cfg.replace(decode_attention="xla"), greedy, prompts, jax.random.key(0))
    ours = sampler.generate(params, paged_cfg, greedy, prompts, jax.random.key(0))
    assert [len(row) for row in xla] == [8, 8, 8]
    assert len({tuple(row) for row in xla}) == 3  # the rows really differ
    assert ours == xla


def test_sampling_on_a_mesh_through_the_kernel_equals_the_xla_path():
    """Rows over fsdp and key/value heads over tensor: the kernel runs once per shard on its
    rows and heads; sampled with a fixed key, every token equals the XLA path's."""
    here = Path(__file__).parent
    out = run_on_8_devices([str(here / "decode_kernel_mesh_run.py")], [str(here.parent)], 600)
    assert out.returncode == 0, out.stderr[-3000:]
    drawn = json.loads(out.stdout.strip().splitlines()[-1])
    assert len({tuple(row) for row in drawn["xla"]}) == 4  # the rows really differ
    assert drawn["paged_interpret"] == drawn["xla"]


def test_decode_logits_through_the_kernel_equal_the_xla_path():
    """Prefill of left-padded rows, then teacher-forced decode steps: every step's logits over
    the paged cache (the kernel) against those over the slot-ordered cache (the einsum)."""
    cfg = _cfg()
    params = decoder.init_params(cfg, jax.random.key(2))
    rng = np.random.default_rng(3)
    lengths, lp, steps = (3, 9, 16), 16, 6
    tokens_BxLp = np.zeros((len(lengths), lp), np.int32)
    for row, n in enumerate(lengths):
        tokens_BxLp[row, lp - n :] = rng.integers(3, 96, size=n)
    pad_B = lp - np.asarray(lengths)
    positions_BxLp = np.maximum(np.arange(lp)[None] - pad_B[:, None], 0)
    segment_ids_BxLp = (np.arange(lp)[None] >= pad_B[:, None]).astype(np.int32)
    new_tokens_BxT = rng.integers(3, 96, size=(len(lengths), steps)).astype(np.int32)

    def run(choice):
        c = cfg.replace(decode_attention=choice)

        def f(params):
            cache = decoder.init_cache(c, len(lengths), lp + steps)
            hidden, cache = decoder.apply_with_cache(
                params, c, tokens_BxLp, positions_BxLp, segment_ids_BxLp, cache
            )
            logits = [head.logits_BxLxV(params, c, hidden[:, -1:])]
            for t in range(steps):
                position_Bx1 = np.asarray(lengths)[:, None] + t
                hidden, cache = decoder.apply_with_cache(
                    params, c, new_tokens_BxT[:, t : t + 1], position_Bx1, np.ones_like(position_Bx1), cache
                )
                logits.append(head.logits_BxLxV(params, c, hidden))
            return jnp.concatenate(logits, axis=1).astype(jnp.float32), cache

        return jax.jit(f)(params)

    expected, xla_cache = run("xla")
    logits, paged = run("paged_interpret")
    assert isinstance(xla_cache, decoder.KVCache) and isinstance(paged, decoder.PagedKVCache)
    np.testing.assert_array_equal(paged.lengths_B, np.asarray(lengths) + steps)
    spread = float(jnp.std(expected))
    assert spread > 0.1
    # bfloat16 activations: the paths differ by the rounding of attention's probabilities.
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=0.05 * spread, rtol=0)


@pytest.mark.parametrize(
    "family,overrides,reason",
    [
        ("mistral", {}, "sliding window"),
        ("llama3", {"head_dim": 64}, "multiple of 128"),
        ("llama3", {"dtype": "float32"}, "bfloat16"),
    ],
)
def test_models_the_kernel_cannot_serve_fall_back_to_xla(caplog, family, overrides, reason):
    hf = dict(FAMILY_CONFIGS[family], head_dim=overrides.get("head_dim", DH))
    cfg = model_config_from_hf(hf, dtype=overrides.get("dtype", "bfloat16"))
    assert reason in decode_attention.unsupported(cfg)
    with caplog.at_level(logging.INFO, logger=decode_attention.__name__):
        assert decode_attention.for_target(cfg, "tpu").decode_attention == "xla"
    assert reason in caplog.text
    with pytest.raises(attention.BackendUnavailableError, match=f"model.decode_attention=paged: .*{reason}"):
        decode_attention.for_target(cfg.replace(decode_attention="paged"), "tpu")


def test_the_kernel_is_chosen_by_target_platform():
    cfg = _cfg()
    assert decode_attention.unsupported(cfg) is None
    assert decode_attention.for_target(cfg, "tpu").decode_attention == "paged"
    assert decode_attention.for_target(cfg, "cpu").decode_attention == "xla"
    assert decode_attention.for_target(cfg, "gpu").decode_attention == "xla"
    assert decode_attention.for_target(cfg.replace(decode_attention="xla"), "tpu").decode_attention == "xla"
    interpret = cfg.replace(decode_attention="paged_interpret")
    assert decode_attention.for_target(interpret, "cpu").decode_attention == "paged_interpret"
    with pytest.raises(attention.BackendUnavailableError, match="'paged' is a TPU kernel"):
        decode_attention.for_target(cfg.replace(decode_attention="paged"), "cpu")
    with pytest.raises(ValueError, match="model.decode_attention='flash'"):
        cfg.replace(decode_attention="flash")
    # Traced without a target: the platform JAX runs on (CPU here) decides, and so the layout.
    assert isinstance(decoder.init_cache(cfg, 1, 8), decoder.KVCache)
    with attention.target_platform("tpu"):
        assert isinstance(jax.eval_shape(lambda: decoder.init_cache(cfg, 1, 8)), decoder.PagedKVCache)


@pytest.mark.parametrize("choice", ["auto", "xla"])
def test_the_decode_program_compiled_for_tpu_runs_the_kernel_in_place(choice):
    """For a v5e slice the decode program calls the Pallas kernel (auto), and never copies the
    cache: each step writes its slot in place and the kernel reads the pages where they lie.
    With decode_attention=xla it holds no kernel."""
    pytest.importorskip("libtpu", reason="compiling for TPU topologies needs jax[tpu] (the test extra)")
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, str(here / "decode_kernel_tpu_compile.py"), choice],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if choice == "auto":
        assert report["cache"] == "PagedKVCache" and report["kernel"]
        assert report["cache_values"] > 0 and report["cache_copies"] == 0
    else:
        assert report["cache"] == "KVCache" and not report["kernel"]
