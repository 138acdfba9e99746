"""Reward-model scores against transformers' `*ForSequenceClassification` logits."""

import numpy as np
import pytest
import torch

from alignjax.data.byte_tokenizer import PAD_ID
from alignjax.rewards import reward_model as rm
from alignjax.rewards.functions import build_reward

TOL = 1e-4
LENGTHS = (11, 4, 7, 1)
L = 12


def _padded(lengths, side, seed):
    rng = np.random.default_rng(seed)
    tokens = np.full((len(lengths), L), PAD_ID, np.int64)
    mask = np.zeros((len(lengths), L), np.int64)
    for b, n in enumerate(lengths):
        cols = slice(L - n, L) if side == "left" else slice(0, n)
        tokens[b, cols] = rng.integers(0, 256, size=n)
        mask[b, cols] = 1
    return tokens, mask


def _hf_logits(model, tokens, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.mark.parametrize("name,num_labels", [("llama2", 1), ("qwen2", 2), ("gemma", 1)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_scores_equal_transformers_logits(tiny_classifier, name, num_labels, side):
    path, hf_model = tiny_classifier(name, num_labels)
    model = rm.load_reward_model(path)
    assert model.num_labels == num_labels and model.pad_token_id == PAD_ID
    tokens, mask = _padded(LENGTHS, side, seed=len(name))
    scorer = rm.make_scorer(model.cfg, model.pad_token_id)
    ours = np.asarray(scorer(model.params, model.score_DxC, tokens, mask))
    expected = _hf_logits(hf_model, tokens, mask)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (len(LENGTHS), num_labels)
    assert np.abs(expected).max() > 0.5 and np.std(expected[:, 0]) > 0.1
    np.testing.assert_allclose(ours, expected, atol=TOL, rtol=0)


def test_pooled_index_follows_the_pad_id_not_the_mask():
    """transformers scores the rightmost non-pad id, even inside the attended span."""
    tokens = np.asarray([[5, 6, PAD_ID, PAD_ID], [PAD_ID, 7, 8, 9], [5, 6, 7, PAD_ID]])
    mask = np.asarray([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(rm.pooled_index_B(tokens, mask, PAD_ID), [1, 3, 2])
    np.testing.assert_array_equal(rm.pooled_index_B(tokens, mask, None), [1, 3, 3])


def test_text_reward_uses_the_models_tokenizer(tiny_classifier):
    path, hf_model = tiny_classifier("llama2", 1)
    reward = build_reward({"name": "reward_model", "path": path, "batch_size": 2})
    prompts = ["What is 2+2?", "Name a colour.", "Hi"]
    responses = ["4", "A deep shade of blue, like the sea at dusk.", "Hello there!"]
    ours = reward(prompts, responses)

    tokenizer = reward.tokenizer
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        for p, r in zip(prompts, responses)
    ]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = hf_model(**enc).logits[:, 0].numpy()
    assert ours.dtype == np.float32 and ours.shape == (3,)
    np.testing.assert_allclose(ours, expected, atol=TOL, rtol=0)


def test_causal_lm_checkpoint_is_rejected_with_a_reason(tiny_family):
    path, _, _, _ = tiny_family("llama2")
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        rm.load_reward_model(path)
