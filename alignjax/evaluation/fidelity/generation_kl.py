"""Sampled generations of a run and their sequence KL from its reference.

KL(pi || pi_ref) of whole responses, estimated by Monte Carlo from the policy's own
samples at temperature 1 (no top-k / top-p, so the samples follow pi exactly):
KL_hat(y) = sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) over the generated
tokens, the final EOS included (stopping is part of the sequence's probability).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.evaluation.fidelity import runs
from alignjax.generation import sampler
from alignjax.generation.responses import decode_response, sampling_config
from alignjax.models import decoder
from alignjax.train.config import LossSection
from alignjax.train.methods.common import logps_from_hidden


@dataclasses.dataclass
class Generations:
    """`num_samples` responses per prompt, prompt-major."""

    prompt_index: list[int]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # generated ids, the stopping EOS included
    texts: list[str]


def sample(
    run: runs.Run,
    params,
    prompts: list[dict[str, Any]],
    num_samples: int,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 64,
) -> Generations:
    """Temperature-1 samples of `params` (the run's policy, or its reference) for each prompt.

    Batch i draws with fold_in(seed, i): the same seed gives every run the same keys."""
    sampling = sampling_config(run.policy, max_new_tokens, 1.0)
    rendered = [run.renderer.render(p, "eval_prompts", i).ids.tolist() for i, p in enumerate(prompts)]
    index = [i for i in range(len(prompts)) for _ in range(num_samples)]
    rows = [rendered[i] for i in index]
    key = jax.random.key(seed)
    out: list[list[int]] = []
    for b, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[start : start + batch_size]
        padded = chunk + [chunk[0]] * (batch_size - len(chunk))  # one compiled shape
        out += sampler.generate(params, run.policy.cfg, sampling, padded, jax.random.fold_in(key, b))[
            : len(chunk)
        ]
    texts = [decode_response(run.policy, ids) for ids in out]
    return Generations(index, rows, out, texts)


@functools.lru_cache(maxsize=4)
def _logps_fn(cfg):
    @jax.jit
    def logps_BxL(params, tokens_BxL, segment_ids_BxL):
        positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
        hidden_BxLxD = decoder.apply(params, cfg, tokens_BxL, positions_BxL, segment_ids_BxL)
        return logps_from_hidden(params, cfg, LossSection(), hidden_BxLxD, tokens_BxL)

    return logps_BxL


def response_batch(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, multiple: int = 16
):
    """(tokens_BxL, segment_ids_BxL, response_mask_BxL), right-padded to a multiple of
    `multiple`; the mask is 1 on each row's response tokens."""
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    width = -(-max(lengths) // multiple) * multiple
    tokens_BxL = np.full((len(lengths), width), pad_id, np.int32)
    segment_ids_BxL = np.zeros_like(tokens_BxL)
    response_mask_BxL = np.zeros(tokens_BxL.shape, np.float32)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        tokens_BxL[b, : len(p) + len(r)] = p + r
        segment_ids_BxL[b, : len(p) + len(r)] = 1
        response_mask_BxL[b, len(p) : len(p) + len(r)] = 1
    return tokens_BxL, segment_ids_BxL, response_mask_BxL


def sequence_kl_N(policy_logps_BxL, ref_logps_BxL, response_mask_BxL) -> np.ndarray:
    """Per sample: sum over its response tokens of log pi - log pi_ref."""
    return np.sum((np.asarray(policy_logps_BxL) - np.asarray(ref_logps_BxL)) * response_mask_BxL, axis=-1)


def sequence_kl(run: runs.Run, params, ref_params, gens: Generations, batch_size: int = 64) -> np.ndarray:
    """KL_hat of every generation (sampled from `params`) against `ref_params`."""
    logps = _logps_fn(run.policy.cfg)
    out = []
    for start in range(0, len(gens.texts), batch_size):
        tokens_BxL, segments_BxL, mask_BxL = response_batch(
            gens.prompt_ids[start : start + batch_size],
            gens.response_ids[start : start + batch_size],
            run.policy.pad_id,
        )
        out.append(
            sequence_kl_N(
                logps(params, tokens_BxL, segments_BxL),
                logps(ref_params, tokens_BxL, segments_BxL),
                mask_BxL,
            )
        )
    return np.concatenate(out)
