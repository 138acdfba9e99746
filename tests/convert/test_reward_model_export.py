"""A reward model exported by alignjax scores as transformers' AutoModelForSequenceClassification.

The scores compared are the ones training optimises: the decoder's hidden states read by
the score head at the token the reward method pools (`pooled_token_mask_BxL`), on rows
right-padded as the trainer pads them, some holding the pad id inside the sequence.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_models import build_hf_model

from alignjax.convert import api
from alignjax.convert import model_checkpoint as mc
from alignjax.convert.loading import ModelSection, load_model
from alignjax.convert.safetensors_io import iter_tensors
from alignjax.models import decoder
from alignjax.models.parts import DECODER
from alignjax.models.score_head import SCORE_HEAD_KEY, init_score_head, token_scores_BxLxC
from alignjax.train.methods.reward import pooled_token_mask_BxL

FAMILIES = ("llama2", "llama3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
PAD_ID = 0  # hf_models' pad id
L = 12
# Float32 on both sides; XLA and PyTorch CPU reduce in different orders (observed <= 2e-6).
ATOL = 1e-5


def _rows(seed):
    """Right-padded rows; row 1 ends its sequence with the pad id, row 3 has one inside."""
    rng = np.random.default_rng(seed)
    lengths = (11, 4, 7, 1, 12)
    tokens = np.full((len(lengths), L), PAD_ID, np.int64)
    mask = np.zeros((len(lengths), L), np.int64)
    for b, n in enumerate(lengths):
        tokens[b, :n] = rng.integers(3, 96, size=n)
        mask[b, :n] = 1
    tokens[1, 3] = PAD_ID
    tokens[4, 5] = PAD_ID
    return tokens, mask


def _alignjax_rewards(cfg, params, score_head, tokens, mask):
    segment_ids = jnp.asarray(mask, jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=-1) - 1, 0) * segment_ids
    hidden = decoder.apply(params, cfg, jnp.asarray(tokens, jnp.int32), positions, segment_ids)
    scores = token_scores_BxLxC(score_head, hidden)[..., 0]
    pooled = pooled_token_mask_BxL(jnp.asarray(tokens, jnp.int32), segment_ids, cfg.pad_token_id)
    assert np.all(np.asarray(pooled).sum(-1) == 1)
    return np.asarray(jnp.where(pooled, scores, 0.0).sum(-1))


def _hf_rewards(model, tokens, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()


def _export(loaded, parts, tmp_path):
    """Save as a training run checkpoints ({decoder, score_head}), then export."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    params = {DECODER: loaded.params, **parts}
    mc.save_model(str(ckpt), params, loaded.meta, step=7)
    api.orbax_to_hf(str(ckpt), str(out))
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(out), output_loading_info=True, dtype=torch.float32
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.config.num_labels == 1 and model.config.pad_token_id == PAD_ID
    return model.eval(), out


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_classifier_exports_with_equal_scores(family, tmp_path):
    src = tmp_path / "src"
    hf_model = build_hf_model(family, str(src), head="sequence_classification", num_labels=1)
    loaded = load_model(
        ModelSection(hf_path=str(src), scan_layers=family.startswith("gemma")), jax.random.key(0)
    )
    assert set(loaded.parts) == {SCORE_HEAD_KEY} and "lm_head" not in loaded.params
    tokens, mask = _rows(len(family))
    ours = _alignjax_rewards(loaded.cfg, loaded.params, loaded.parts[SCORE_HEAD_KEY], tokens, mask)
    source = _hf_rewards(hf_model.eval(), tokens, mask)
    assert np.std(source) > 0.1  # the scores differ from row to row: pooling matters
    np.testing.assert_allclose(ours, source, atol=ATOL, rtol=0)

    exported, out = _export(loaded, loaded.parts, tmp_path)
    np.testing.assert_allclose(_hf_rewards(exported, tokens, mask), ours, atol=ATOL, rtol=0)
    # Nothing changed on the way: every tensor round-trips bit for bit.
    before = {n: np.array(a) for n, a in iter_tensors(str(src))}
    after = {n: np.array(a) for n, a in iter_tensors(str(out))}
    assert sorted(before) == sorted(after)
    assert all(before[n].tobytes() == after[n].tobytes() for n in before)


@pytest.mark.parametrize("family", ["llama2", "qwen2", "gemma"])
def test_causal_lm_gets_a_new_head_and_exports_as_a_classifier(family, tmp_path):
    """From a causal LM (llama2: an untied lm_head, which a classifier drops)."""
    src = tmp_path / "src"
    build_hf_model(family, str(src))
    loaded = load_model(ModelSection(hf_path=str(src)), jax.random.key(0))
    assert loaded.parts == {}
    head = init_score_head(jax.random.key(1), loaded.cfg.hidden_size, 0.02)
    assert head["kernel"].shape == (loaded.cfg.hidden_size, 1)
    np.testing.assert_allclose(float(np.std(head["kernel"])), 0.02, rtol=0.25)
    head = {"kernel": head["kernel"] * 25.0}  # scores well away from 0, so the check means something
    tokens, mask = _rows(3)
    ours = _alignjax_rewards(loaded.cfg, loaded.params, head, tokens, mask)
    exported, _ = _export(loaded, {SCORE_HEAD_KEY: head}, tmp_path)
    theirs = _hf_rewards(exported, tokens, mask)
    assert np.std(theirs) > 0.1
    # The scaled head carries the backbone's float32 noise up with the scores (up to ~7).
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama2", "gemma2"])
def test_classifier_converts_to_orbax_and_back_bit_identical(family, tmp_path):
    src, ckpt, out = tmp_path / "src", tmp_path / "ckpt", tmp_path / "out"
    build_hf_model(family, str(src), head="sequence_classification", num_labels=1)
    api.hf_to_orbax(str(src), str(ckpt))
    api.orbax_to_hf(str(ckpt), str(out))
    before = {n: np.array(a) for n, a in iter_tensors(str(src))}
    after = {n: np.array(a) for n, a in iter_tensors(str(out))}
    assert "score.weight" in after and sorted(before) == sorted(after)
    assert all(before[n].tobytes() == after[n].tobytes() for n in before)
