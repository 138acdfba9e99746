"""Every supported family against transformers' own logits, in float32."""

import functools

import jax
import numpy as np
import pytest
import torch

from hf_models import FAMILY_CONFIGS, build_hf_model
from alignjax.convert.api import load_hf_model
from alignjax.models import decoder, head

L = 12  # longer than the test sliding windows (5), so windows are exercised
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _forward(cfg):
    def f(params, tokens, positions, segment_ids):
        hidden = decoder.apply(params, cfg, tokens, positions, segment_ids)
        return head.logits_BxLxV(params, cfg, hidden)

    return jax.jit(f)


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def family(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf_model = build_hf_model(request.param, str(path))
    cfg, params, _ = load_hf_model(str(path))
    return request.param, str(path), hf_model, cfg, params


def _hf_logits(hf_model, tokens_1d):
    with torch.no_grad():
        return hf_model(torch.tensor(np.asarray(tokens_1d))[None]).logits[0].numpy()


def test_logits_match_transformers(family):
    _, _, hf_model, cfg, params = family
    tokens = np.random.default_rng(1).integers(3, cfg.vocab_size, size=(2, L))
    positions = np.broadcast_to(np.arange(L), (2, L))
    logits = np.asarray(_forward(cfg)(params, tokens, positions, np.ones((2, L), np.int32)))
    with torch.no_grad():
        expected = hf_model(torch.tensor(tokens)).logits.numpy()
    assert np.abs(expected).max() > 1.0  # weights are large enough for the check to mean something
    np.testing.assert_allclose(logits, expected, atol=TOL, rtol=0)


def test_left_padding(family):
    _, _, hf_model, cfg, params = family
    rng = np.random.default_rng(2)
    lengths = [L, 7]
    tokens = np.zeros((2, L), np.int64)
    positions = np.zeros((2, L), np.int32)
    segment_ids = np.zeros((2, L), np.int32)
    rows = []
    for b, n in enumerate(lengths):
        row = rng.integers(3, cfg.vocab_size, size=n)
        rows.append(row)
        tokens[b, L - n :] = row
        positions[b, L - n :] = np.arange(n)
        segment_ids[b, L - n :] = 1
    logits = np.asarray(_forward(cfg)(params, tokens, positions, segment_ids))
    for b, row in enumerate(rows):
        np.testing.assert_allclose(logits[b, L - len(row) :], _hf_logits(hf_model, row), atol=TOL, rtol=0)


def test_packed_segments_equal_each_segment_alone(family):
    _, _, hf_model, cfg, params = family
    rng = np.random.default_rng(3)
    first, second = rng.integers(3, cfg.vocab_size, size=7), rng.integers(3, cfg.vocab_size, size=4)
    packed = np.concatenate([first, second, [0]])  # one trailing pad
    tokens = np.stack([packed, packed])
    positions = np.stack([np.r_[np.arange(7), np.arange(4), 0]] * 2)
    segment_ids = np.stack([np.r_[[1] * 7, [2] * 4, 0]] * 2)
    logits = np.asarray(_forward(cfg)(params, tokens, positions, segment_ids))[0]

    def alone(row):
        t = np.zeros((2, L), np.int64)
        t[:, : len(row)] = row
        p = np.broadcast_to(np.arange(L), (2, L))
        s = (np.arange(L) < len(row)).astype(np.int32)[None].repeat(2, 0)
        return np.asarray(_forward(cfg)(params, t, p, s))[0, : len(row)]

    np.testing.assert_allclose(logits[:7], alone(first), atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits[7:11], alone(second), atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits[7:11], _hf_logits(hf_model, second), atol=TOL, rtol=0)


def test_scanned_equals_unscanned(family):
    _, path, _, cfg, params = family
    scanned_cfg, scanned_params, _ = load_hf_model(path, scan_layers=True)
    assert "layers" in scanned_params and scanned_params["layers"]["q"]["kernel"].shape[0] == cfg.num_layers
    tokens = np.random.default_rng(4).integers(3, cfg.vocab_size, size=(2, L))
    positions = np.broadcast_to(np.arange(L), (2, L))
    segment_ids = np.ones((2, L), np.int32)
    expected = np.asarray(_forward(cfg)(params, tokens, positions, segment_ids))
    got = np.asarray(_forward(scanned_cfg)(scanned_params, tokens, positions, segment_ids))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
