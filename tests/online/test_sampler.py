"""The sampler against transformers' `generate`, and its stopping, sampling and shapes."""

import jax
import numpy as np
import pytest
import torch

from alignjax.generation import sampler
from alignjax.generation.logit_filters import SamplingConfig
from hf_models import FAMILY_CONFIGS

T = 8
EOS = 2  # the tiny models' eos_token_id
GREEDY = SamplingConfig(max_new_tokens=T, temperature=0.0, eos_ids=(EOS,), pad_id=0)
# Mixed lengths in one left-padded batch; 13 + 8 tokens run well past the windows of 5.
PROMPT_LENGTHS = (3, 9, 13)


def _prompts(seed, lengths=PROMPT_LENGTHS):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 96, size=n).tolist() for n in lengths]


def _hf_greedy(hf_model, prompt, eos_id):
    """transformers on one unpadded prompt; stops early only when it emits `eos_id`."""
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=T,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def _sample(params, cfg, settings, tokens_BxLp, lengths_B, keys_P):
    """Prefill then decode, as one jitted function of host arrays."""

    def fn(params, tokens_BxLp, lengths_B, keys_P):
        state = sampler.prefill(params, cfg, settings, tokens_BxLp, lengths_B, keys_P)
        return sampler.decode(params, cfg, settings, state, keys_P)

    return jax.jit(fn)(params, tokens_BxLp, lengths_B, keys_P)


def _scan(name):
    # Scanning the deeper models keeps compile time down and covers scanned decode.
    return FAMILY_CONFIGS[name]["num_hidden_layers"] > 2


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_greedy_matches_transformers(tiny_family, name):
    _, hf_model, cfg, params = tiny_family(name, _scan(name))
    prompts = _prompts(seed=len(name))
    ours = sampler.generate(params, cfg, GREEDY, prompts, jax.random.key(0))
    for prompt, row in zip(prompts, ours):
        assert row == _hf_greedy(hf_model, prompt, EOS)


def test_rows_stop_at_their_own_eos(tiny_family):
    _, hf_model, cfg, params = tiny_family("llama2")
    prompts = _prompts(seed=5)
    free_run = sampler.generate(params, cfg, GREEDY, prompts, jax.random.key(0))
    # An id row 0 first emits at step 3 becomes the EOS, so row 0 must stop there.
    eos = next(tok for tok in free_run[0][3:] if tok not in free_run[0][:3])
    stop_at = free_run[0].index(eos)
    settings = SamplingConfig(max_new_tokens=T, temperature=0.0, eos_ids=(eos, 95), pad_id=0)
    tokens_BxLp, lengths_B = sampler.left_pad(prompts, pad_id=0)
    out = _sample(params, cfg, settings, tokens_BxLp, lengths_B, jax.random.key(0)[None])
    tokens, lengths, hit_eos = (np.asarray(x) for x in out)
    assert lengths[0] == stop_at + 1 and hit_eos[0]
    assert (tokens[0, stop_at + 1 :] == 0).all()
    for b, prompt in enumerate(prompts):
        expected = _hf_greedy(hf_model, prompt, [eos, 95])
        assert tokens[b, : lengths[b]].tolist() == expected
        assert hit_eos[b] == (expected[-1] in (eos, 95))
        assert lengths[b] == len(expected)


def test_top_k_1_equals_greedy(tiny_family):
    _, _, cfg, params = tiny_family("qwen2")
    prompts = _prompts(seed=6)
    greedy = sampler.generate(params, cfg, GREEDY, prompts, jax.random.key(0))
    top1 = SamplingConfig(max_new_tokens=T, temperature=1.5, top_k=1, eos_ids=(EOS,), pad_id=0)
    assert sampler.generate(params, cfg, top1, prompts, jax.random.key(3)) == greedy


def test_sampling_is_reproducible_from_the_rng(tiny_family):
    _, _, cfg, params = tiny_family("llama2")
    prompts = _prompts(seed=7) * 4
    settings = SamplingConfig(max_new_tokens=T, temperature=1.0, top_p=0.9, eos_ids=(EOS,), pad_id=0)
    first = sampler.generate(params, cfg, settings, prompts, jax.random.key(11))
    assert sampler.generate(params, cfg, settings, prompts, jax.random.key(11)) == first
    assert sampler.generate(params, cfg, settings, prompts, jax.random.key(12)) != first


def test_temperature_draws_follow_the_softened_distribution(tiny_family):
    """First tokens of many copies of one prompt vs softmax(logits / T) from transformers."""
    _, hf_model, cfg, params = tiny_family("llama2")
    prompt = _prompts(seed=8, lengths=(6,))[0]
    temperature, n = 2.0, 4096
    settings = SamplingConfig(max_new_tokens=1, temperature=temperature, pad_id=0)
    drawn = sampler.generate(params, cfg, settings, [prompt] * n, jax.random.key(0))
    counts = np.bincount([row[0] for row in drawn], minlength=cfg.vocab_size)
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt])).logits[0, -1].double().numpy()
    probs = np.exp(logits / temperature - np.max(logits / temperature))
    probs /= probs.sum()
    # Total variation of an n-sample histogram over ~96 outcomes is ~0.06 at this n.
    assert 0.5 * np.abs(counts / n - probs).sum() < 0.1
    assert probs.max() < 0.5  # the temperature flattened the distribution enough to matter


def test_prompt_lengths_share_power_of_two_buckets(tiny_family):
    assert [sampler.bucket_length(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    tokens, lengths = sampler.left_pad([[5, 6, 7], [8]], pad_id=0, min_bucket=4)
    np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(lengths, [3, 1])
    with pytest.raises(ValueError, match="at least one token"):
        sampler.left_pad([[5], []], pad_id=0)

    _, _, cfg, params = tiny_family("llama2")
    settings = SamplingConfig(max_new_tokens=2, temperature=0.0, pad_id=0)
    built = sampler.sampling_program.cache_info().misses
    for lengths_of_call in [(3, 9), (13, 2), (16, 1)]:
        sampler.generate(params, cfg, settings, _prompts(0, lengths_of_call), jax.random.key(0))
    assert sampler.sampling_program.cache_info().misses == built + 1
    mesh = sampler.params_mesh(params)
    program = sampler.sampling_program(
        cfg, settings, mesh, sampler.params_layout(params, mesh), 2, 16, "threefry2x32"
    )
    # All three calls ran one compiled prefill and decode (a private counter, but the direct evidence).
    assert program.prefill._cache_size() == 1 and program.decode._cache_size() == 1


def test_key_blocks_draw_what_their_rows_draw_alone(tiny_family):
    """Rows [0, 3) draw with key 0 and rows [3, 6) with key 1, as each block alone would; an
    empty prompt (a block filled up to the agreed rows) is done before it starts."""
    _, _, cfg, params = tiny_family("llama2")
    settings = SamplingConfig(max_new_tokens=T, temperature=1.0, top_p=0.9, eos_ids=(EOS,), pad_id=0)
    first, second = _prompts(seed=9, lengths=(3, 9, 13)), _prompts(seed=10, lengths=(5, 2))
    keys_P = jax.random.split(jax.random.key(4), 2)
    tokens_BxLp, lengths_B = sampler.left_pad(first + second + [[1]], pad_id=0)
    lengths_B[-1] = 0
    tokens_BxLp[-1] = 0
    both = _sample(params, cfg, settings, tokens_BxLp, lengths_B, keys_P)
    tokens_BxT, lengths = np.asarray(both.tokens_BxT), np.asarray(both.lengths_B)
    rows = [tokens_BxT[b, : lengths[b]].tolist() for b in range(6)]
    assert rows[:3] == sampler.generate(params, cfg, settings, first, keys_P[0])
    assert rows[3:5] == sampler.generate(params, cfg, settings, second, keys_P[1])
    assert lengths[5] == 0 and (tokens_BxT[5] == 0).all() and not np.asarray(both.hit_eos_B)[5]
    # The keys matter: swapped, the blocks draw other tokens.
    swapped = _sample(params, cfg, settings, tokens_BxLp, lengths_B, keys_P[::-1])
    assert not np.array_equal(np.asarray(swapped.tokens_BxT)[:5], tokens_BxT[:5])
