"""Each stage kind's loss over a batch, as one pure function the step differentiates.

    fn(params, ref_params, batch, state, rng) -> (loss, (metrics, state, per_pair))

`params` is the decoder's tree, plus `mask_head` (SparsePO learned masks) or
`user_model` (P-DPO) when the objective trains parts of its own. `per_pair` carries
per-pair implicit-reward margins for exact eval aggregation on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from alignjax.data import ops as data_ops
from alignjax.losses import token_kl, token_logps
from alignjax.losses.activation_masks import activation_mask
from alignjax.losses.cut import CUTConfig, cut_loss
from alignjax.losses.dpo import DPOConfig, implicit_rewards, dpo_loss, init_dpo_state
from alignjax.losses.dpo_family import PairLogps
from alignjax.losses.personalized import PDPOConfig, PersonalizedLogps, pdpo_loss
from alignjax.losses.sft import sft_loss
from alignjax.losses.token_weighted import SparsePOConfig, TokenPairLogps, TokenWeights, sparsepo_loss
from alignjax.models import decoder, head
from alignjax.models.config import ModelConfig
from alignjax.models.mask_head import MASK_HEAD_KEY, MaskHead
from alignjax.models.user_model import UserModel, vocab_rows_init
from alignjax.train.config import LossSection

USER_MODEL_KEY = "user_model"


@dataclasses.dataclass(frozen=True)
class Objective:
    fn: Callable[..., Any]
    needs_reference: bool
    init_state: Callable[[], Any] = dict
    # (rng, decoder params) -> extra trainable params merged into the tree, e.g. the mask head.
    init_extra: Callable[[jax.Array, Any], dict[str, Any]] = lambda rng, params: {}
    # The mask head trains with its own weight decay: (model_tx, lr) -> combined transform.
    wrap_optimizer: Callable[[Any, Any], Any] | None = None


def _decoder_params(params):
    return {k: v for k, v in params.items() if k not in (MASK_HEAD_KEY, USER_MODEL_KEY)}


def logps_from_hidden(params, cfg: ModelConfig, loss: LossSection, hidden_BxLxD, tokens_BxL):
    """log p(tokens[t] | tokens[<t]) at column t (0 at t = 0): the batches' mask convention."""
    unembed_DxV = head.unembedding_DxV(params, cfg).astype(cfg.dtype)
    logps_BxLm1 = token_logps(
        hidden_BxLxD[:, :-1],
        unembed_DxV,
        tokens_BxL[:, 1:],
        final_logit_softcap=cfg.final_logit_softcap,
        token_chunk=loss.token_chunk,
        vocab_chunk=loss.vocab_chunk,
    )
    return jnp.pad(logps_BxLm1, ((0, 0), (1, 0)))


def _forward_logps(params, cfg, loss, tokens_BxL, positions_BxL, segment_ids_BxL, extra=None):
    hidden_BxLxD = decoder.apply(
        _decoder_params(params), cfg, tokens_BxL, positions_BxL, segment_ids_BxL, extra
    )
    return logps_from_hidden(params, cfg, loss, hidden_BxLxD, tokens_BxL)


def _pair_logps(params, cfg, loss, batch, extra=None) -> PairLogps:
    logps_BxL = _forward_logps(
        params, cfg, loss, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL, extra
    )
    chosen_P, rejected_P = data_ops.pair_sums(logps_BxL, batch)
    chosen_len_P, rejected_len_P = data_ops.pair_sums(jnp.ones_like(logps_BxL), batch)
    return PairLogps(chosen_P, rejected_P, chosen_len_P, rejected_len_P)


def _per_condition(values_P, condition_P, valid_P, num_conditions: int):
    """Mean of values per condition id (0 = none), [num_conditions + 1]."""
    n = num_conditions + 1
    total = jax.ops.segment_sum(values_P * valid_P, condition_P, num_segments=n)
    count = jax.ops.segment_sum(valid_P, condition_P, num_segments=n)
    return total / jnp.maximum(count, 1.0), count


def _pair_outputs(metrics, margin_P, batch, num_conditions):
    valid_P = batch.pair_valid_P.astype(jnp.float32)
    if num_conditions:
        acc_C, count_C = _per_condition(
            (margin_P > 0).astype(jnp.float32), batch.condition_id_P, valid_P, num_conditions
        )
        metrics["rewards/accuracies_by_condition"] = acc_C
        metrics["count_by_condition"] = count_C
    return {
        "margin_P": jax.lax.stop_gradient(margin_P),
        "valid_P": valid_P,
        "condition_P": batch.condition_id_P,
    }


def _require_unpacked(batch, kind: str):
    if batch.segment_pair_index_BxS.shape[1] != 1:
        raise ValueError(
            f"loss.type={kind} compares chosen and rejected token by token: set data.packing: false"
        )


def dpo_config(loss: LossSection) -> DPOConfig:
    return DPOConfig(
        loss_type=loss.names,
        loss_weights=tuple(loss.weights) if loss.weights else None,
        beta=loss.beta,
        label_smoothing=loss.label_smoothing,
        discopop_tau=loss.discopop_tau,
        simpo_beta=loss.simpo_beta,
        simpo_gamma=loss.simpo_gamma,
        orpo_lambda=loss.orpo_lambda,
    )


def _sft(cfg, loss, info) -> Objective:
    def fn(params, ref_params, batch, state, rng):
        logps_BxL = _forward_logps(
            params, cfg, loss, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL
        )
        value, metrics = sft_loss(logps_BxL, batch.loss_mask_BxL * (batch.segment_ids_BxL > 0))
        return value, (metrics, state, {})

    return Objective(fn, needs_reference=False)


def _preference(cfg, loss, info) -> Objective:
    dpo = dpo_config(loss)
    precomputed = loss.reference == "precomputed"

    def fn(params, ref_params, batch, state, rng):
        policy = _pair_logps(params, cfg, loss, batch)
        if dpo.needs_reference and precomputed:
            if batch.ref_chosen_logps_P is None or batch.ref_rejected_logps_P is None:
                raise ValueError(
                    "loss.reference=precomputed: the batch carries no reference log-probs "
                    "(the trainer attaches them from the `alignjax precompute-ref` table)"
                )
            policy = policy._replace(
                ref_chosen_logps_B=batch.ref_chosen_logps_P, ref_rejected_logps_B=batch.ref_rejected_logps_P
            )
        elif dpo.needs_reference:
            ref = jax.lax.stop_gradient(_pair_logps(ref_params, cfg, loss, batch))
            policy = policy._replace(
                ref_chosen_logps_B=ref.chosen_logps_B, ref_rejected_logps_B=ref.rejected_logps_B
            )
        valid_P = batch.pair_valid_P.astype(jnp.float32)
        weight_P = valid_P if batch.pair_weight_P is None else valid_P * batch.pair_weight_P
        value, metrics, state = dpo_loss(policy, dpo, state, valid_B=weight_P)
        chosen_r_P, rejected_r_P = implicit_rewards(policy, dpo)
        per_pair = _pair_outputs(metrics, chosen_r_P - rejected_r_P, batch, info["num_conditions"])
        return value, (metrics, state, per_pair)

    return Objective(fn, dpo.needs_reference, lambda: init_dpo_state(dpo))


def _sparsepo(cfg, loss, info) -> Objective:
    section = loss.sparsepo
    if loss.names == ("tdpo",):  # token-level DPO: all-ones weights with the KL term
        section = dataclasses.replace(section, weights="ones", kl=True)
    config = SparsePOConfig(beta=loss.beta, lam_u=section.lam_u, lam_d=section.lam_d)
    head_module = MaskHead(mode=section.mask_mode, dropout_rate=section.mask_dropout)
    learned = section.weights == "learned"

    def fn(params, ref_params, batch, state, rng):
        _require_unpacked(batch, "sparsepo")
        p = batch.pair_valid_P.shape[0]
        tokens, positions, segments = batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL
        policy_hidden = decoder.apply(_decoder_params(params), cfg, tokens, positions, segments)
        policy_logps = logps_from_hidden(params, cfg, loss, policy_hidden, tokens)
        ref_hidden, ref_layers, ref_acts = decoder.apply_with_intermediates(
            ref_params, cfg, tokens, positions, segments
        )
        ref_hidden, ref_layers, ref_acts = jax.lax.stop_gradient((ref_hidden, ref_layers, ref_acts))
        ref_logps = logps_from_hidden(ref_params, cfg, loss, ref_hidden, tokens)
        mask_BxL = (batch.loss_mask_BxL * (segments > 0)).astype(jnp.float32)
        kl_BxL = None
        if section.kl:
            kl = token_kl(
                policy_hidden[:, :-1],
                head.unembedding_DxV(params, cfg).astype(cfg.dtype),
                ref_hidden[:, :-1],
                head.unembedding_DxV(ref_params, cfg).astype(cfg.dtype),
                final_logit_softcap=cfg.final_logit_softcap,
                token_chunk=loss.token_chunk,
                vocab_chunk=loss.vocab_chunk,
            )
            kl_BxL = jnp.pad(kl, ((0, 0), (1, 0)))

        if section.weights == "ones":
            weights = None
        elif section.weights == "given":
            if batch.token_weights_BxL is None:
                raise ValueError("loss.sparsepo.weights=given needs data.token_weights: true")
            w = batch.token_weights_BxL
            weights = TokenWeights(w[:p], w[p:], w[:p], w[p:])
        elif section.weights == "activations":
            acts = {k: v[..., None] for k, v in ref_acts.items()}
            m = activation_mask(acts, mask_BxL)
            weights = TokenWeights(m[:p], m[p:], m[:p], m[p:])
        else:
            m_u, m_d = head_module.apply(
                {"params": params[MASK_HEAD_KEY]}, ref_layers, deterministic=False, rngs={"dropout": rng}
            )
            weights = TokenWeights(m_u[:p], m_u[p:], m_d[:p], m_d[p:])

        pair_tokens = TokenPairLogps(
            policy_logps[:p],
            policy_logps[p:],
            ref_logps[:p],
            ref_logps[p:],
            mask_BxL[:p],
            mask_BxL[p:],
            None if kl_BxL is None else kl_BxL[:p],
            None if kl_BxL is None else kl_BxL[p:],
        )
        value, metrics = sparsepo_loss(pair_tokens, weights, config)
        reward_w = weights.reward_chosen_BxL if weights is not None else 1.0
        reward_l = weights.reward_rejected_BxL if weights is not None else 1.0
        d = policy_logps - ref_logps
        margin_P = config.beta * (
            jnp.sum(reward_w * d[:p] * mask_BxL[:p], -1) - jnp.sum(reward_l * d[p:] * mask_BxL[p:], -1)
        )
        return value, (metrics, state, _pair_outputs(metrics, margin_P, batch, info["num_conditions"]))

    def init_extra(rng, params):
        if not learned:
            return {}
        hidden = jnp.zeros((cfg.num_layers, 1, 1, cfg.hidden_size), jnp.float32)
        return {MASK_HEAD_KEY: head_module.init(rng, hidden, deterministic=True)["params"]}

    def wrap(model_tx, lr):
        from alignjax.models.mask_head import mask_head_optimizer

        return mask_head_optimizer(model_tx, lr, weight_decay=section.mask_weight_decay)

    return Objective(fn, True, init_extra=init_extra, wrap_optimizer=wrap if learned else None)


def _pdpo(cfg, loss, info) -> Objective:
    section = loss.pdpo
    num_users = info["num_users"]
    n_tokens = info["n_user_tokens"]
    if n_tokens <= 0:
        raise ValueError("loss.type=pdpo needs data.n_user_tokens > 0 (the soft-token slots after BOS)")
    config = PDPOConfig(
        num_users=num_users, beta=loss.beta, alpha=section.alpha, label_smoothing=loss.label_smoothing
    )

    def user_module(params_for_init=None):
        init = (
            nn_normal
            if params_for_init is None
            else vocab_rows_init(params_for_init["embedding"] * _embed_scale(cfg))
        )
        return UserModel(
            num_users=num_users,
            width=cfg.hidden_size,
            num_tokens=n_tokens,
            form=section.user_form,
            num_clusters=section.num_clusters,
            token_init=init,
        )

    def fn(params, ref_params, batch, state, rng):
        _require_unpacked(batch, "pdpo")
        p = batch.pair_valid_P.shape[0]
        users_P = batch.user_index_P
        # Slots are contiguous, so their row indices are the first n_tokens of the mask.
        index_BxT = jnp.argsort(1 - batch.user_slot_mask_BxL, axis=1, stable=True)[:, :n_tokens]
        module = user_module()
        user_embeds = module.apply({"params": params[USER_MODEL_KEY]}, jnp.concatenate([users_P, users_P]))
        generic_embeds = module.apply({"params": params[USER_MODEL_KEY]}, jnp.zeros((2 * p,), jnp.int32))
        both = jax.tree.map(lambda x: jnp.concatenate([x, x]), batch)  # one forward for both passes
        extra = decoder.ExtraEmbeddings(
            jnp.concatenate([user_embeds, generic_embeds]), jnp.concatenate([index_BxT, index_BxT])
        )
        logps = _forward_logps(
            params, cfg, loss, both.tokens_BxL, both.positions_BxL, both.segment_ids_BxL, extra
        )
        user_c, user_r = data_ops.pair_sums(logps[: 2 * p], batch)
        gen_c, gen_r = data_ops.pair_sums(logps[2 * p :], batch)
        ref_batch = data_ops.remove_user_slots(batch)
        ref = jax.lax.stop_gradient(_pair_logps(ref_params, cfg, loss, ref_batch))
        value, metrics = pdpo_loss(
            PersonalizedLogps(
                users_P, user_c, user_r, gen_c, gen_r, ref.chosen_logps_B, ref.rejected_logps_B
            ),
            config,
        )
        margin_P = loss.beta * ((user_c - ref.chosen_logps_B) - (user_r - ref.rejected_logps_B))
        return value, (metrics, state, _pair_outputs(metrics, margin_P, batch, info["num_conditions"]))

    def init_extra(rng, params):
        dummy = jnp.zeros((1,), jnp.int32)
        return {USER_MODEL_KEY: user_module(params).init(rng, dummy)["params"]}

    return Objective(fn, True, init_extra=init_extra)


def _embed_scale(cfg):
    # Soft tokens replace rows of the *scaled* input embeddings (see ExtraEmbeddings).
    return cfg.hidden_size**0.5 if cfg.scale_embeddings else 1.0


def nn_normal(key, shape, dtype=jnp.float32):
    return 0.02 * jax.random.normal(key, shape, dtype)


def _cut(cfg, loss, info) -> Objective:
    section = loss.cut
    config = CUTConfig(
        lam=section.lam, a=section.a, g=section.g, detection=section.detection, form=section.form
    )

    def fn(params, ref_params, batch, state, rng):
        logps_BxL = _forward_logps(
            params, cfg, loss, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL
        )
        e = batch.is_satisfactory_E.shape[0]
        mask_BxL = batch.loss_mask_BxL * (batch.segment_ids_BxL > 0)
        valid_E = batch.example_valid_E.astype(bool)
        response_ExL = mask_BxL[:e] * valid_E[:, None]
        is_negative_E = (1 - batch.is_satisfactory_E) * valid_E
        value, metrics = cut_loss(logps_BxL[:e], logps_BxL[e:], response_ExL, is_negative_E, config)
        return value, (metrics, state, {})

    return Objective(fn, needs_reference=False)


def _mo_odpo(cfg, loss, info) -> Objective:
    # The pairs are sampled online (alignjax/online/mo_odpo.py); the loss is sigmoid DPO,
    # and the reference sees the same weight-conditioned prompt as the policy.
    return _preference(cfg, dataclasses.replace(loss, type="sigmoid"), info)


_KINDS = {
    "sft": _sft,
    "preference": _preference,
    "sparsepo": _sparsepo,
    "pdpo": _pdpo,
    "cut": _cut,
    "mo_odpo": _mo_odpo,
}


def make_objective(cfg: ModelConfig, loss: LossSection, info: dict[str, int]) -> Objective:
    """info: num_conditions, num_users (generic user included), n_user_tokens."""
    return _KINDS[loss.stage_kind](cfg, loss, info)
