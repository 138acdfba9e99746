"""Generation with P-DPO user soft tokens spliced in after BOS.

`decoder.apply_with_cache` takes no `extra_embeddings`, so the prefill gets them
another way: the soft tokens become extra rows of the input embedding table, and
the user slots of each prompt are pointed at that row's ids. Only the prefill sees
the widened table; its head and every decode step use the model's own (for tied
embeddings the prefill reads logits from an untied copy of the original table), so
no extra id can ever be sampled. For models without embedding scaling the result is
exactly `decoder.apply(..., extra_embeddings)`; with scaling (Gemma) the rows are
stored divided by sqrt(D) and come back within rounding of the compute dtype.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.generation import sampler
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.models.config import ModelConfig
from alignjax.models.user_model import UserModel


def user_model_from_params(user_params) -> UserModel:
    """The `UserModel` a trained `user_model` tree belongs to, read off its shapes."""
    if "offsets" in user_params:
        users, tokens, width = user_params["offsets"].shape
        return UserModel(num_users=users, width=width, num_tokens=tokens, form="individual")
    if "tokens" in user_params:
        users, tokens, width = user_params["tokens"].shape
        return UserModel(num_users=users, width=width, num_tokens=tokens, form="direct")
    if "prototypes" in user_params:
        clusters, tokens, width = user_params["prototypes"].shape
        users = user_params["mix_logits"].shape[0]
        return UserModel(
            num_users=users, width=width, num_tokens=tokens, form="cluster", num_clusters=clusters
        )
    raise ValueError(f"user_model parameters {sorted(user_params)} match no UserModel form")


def soft_tokens_BxTxD(user_params, user_index_B) -> jax.Array:
    module = user_model_from_params(user_params)
    return module.apply({"params": user_params}, jnp.asarray(user_index_B, jnp.int32))


def _widened(params, cfg: ModelConfig, embeds_BxTxD):
    """(prefill params, prefill cfg, first extra id): soft tokens as rows V.. of the table."""
    embedding_VxD = params["embedding"]
    v, d = embedding_VxD.shape
    rows = embeds_BxTxD.reshape(-1, d)
    if cfg.scale_embeddings:
        rows = rows / jnp.asarray(cfg.hidden_size**0.5, rows.dtype)
    prefill_params = {
        **params,
        "embedding": jnp.concatenate([embedding_VxD, rows.astype(embedding_VxD.dtype)]),
    }
    prefill_cfg = cfg
    if cfg.tie_embeddings:
        prefill_params["lm_head"] = embedding_VxD.T
        prefill_cfg = cfg.replace(tie_embeddings=False)
    return prefill_params, prefill_cfg, v


@functools.lru_cache(maxsize=16)
def _make_soft_sampler(cfg: ModelConfig, sampling: SamplingConfig):
    def fn(params, tokens_BxLp, lengths_B, slot_index_BxT, embeds_BxTxD, rng):
        b, t = slot_index_BxT.shape
        prefill_params, prefill_cfg, first_id = _widened(params, cfg, embeds_BxTxD)
        soft_ids_BxT = first_id + jnp.arange(b * t, dtype=jnp.int32).reshape(b, t)
        tokens_BxLp = tokens_BxLp.at[jnp.arange(b)[:, None], slot_index_BxT].set(soft_ids_BxT)
        state = sampler.prefill(prefill_params, prefill_cfg, sampling, tokens_BxLp, lengths_B, rng[None])
        return sampler.decode(params, cfg, sampling, state, rng[None])

    return jax.jit(fn)


def generate_with_soft_tokens(
    params,
    cfg: ModelConfig,
    sampling: SamplingConfig,
    prompts: Sequence[Sequence[int]],
    slot_start_B: Sequence[int],
    embeds_BxTxD,
    rng,
    min_bucket: int = 16,
) -> list[list[int]]:
    """`sampler.generate` with `embeds_BxTxD[b]` in place of prompt b's T slot tokens,
    which start at `slot_start_B[b]` (1 after a BOS, else 0)."""
    tokens_BxLp, lengths_B = sampler.left_pad(prompts, sampling.pad_id, min_bucket)
    t = embeds_BxTxD.shape[1]
    pad_B = tokens_BxLp.shape[1] - lengths_B
    slot_index_BxT = (pad_B + np.asarray(slot_start_B))[:, None] + np.arange(t)[None]
    out = _make_soft_sampler(cfg, sampling)(
        params, tokens_BxLp, lengths_B, slot_index_BxT.astype(np.int32), embeds_BxTxD, rng
    )
    tokens_BxT, lengths = np.asarray(out.tokens_BxT), np.asarray(out.lengths_B)
    return [tokens_BxT[b, : lengths[b]].tolist() for b in range(len(prompts))]
