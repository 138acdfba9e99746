"""SparsePO (docs/methods.md, section 2): token weights on the reward and the KL; TDPO is the
all-ones case with the KL term."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from alignjax.losses import token_kl
from alignjax.losses.activation_masks import activation_mask
from alignjax.losses.logps_kernel import require_full_distribution
from alignjax.losses.token_weighted import SparsePOConfig, TokenPairLogps, TokenWeights, sparsepo_loss
from alignjax.models import decoder, head
from alignjax.models.mask_head import MASK_HEAD_KEY, MaskHead, mask_head_optimizer
from alignjax.train.methods.common import (
    logps_from_hidden,
    pair_outputs,
    policy_decoder,
    require_positive_beta,
    require_unpacked,
    scored_at_next,
)
from alignjax.train.methods.registry import Method, Objective


@dataclasses.dataclass(frozen=True)
class SparsePOSection(SparsePOConfig):
    """`loss.sparsepo`: the loss's L1 weights (`SparsePOConfig`) and the token weights'
    source. `weights`: ones (TDPO), given (the data's token weights, which every batch then
    carries), activations (MaPO reference-activation masks), learned (mask head)."""

    weights: str = "ones"
    mask_mode: str = "common"  # learned masks: one head (m_u = m_d) or two
    kl: bool = False  # include the token-level KL term delta
    mask_dropout: float = 0.01
    mask_weight_decay: float = 0.01
    # The head's learning rate as a multiple of the model's (same schedule): its masks
    # start near 1 and need O(1) moves to reach exact zeros, while a preference stage's
    # model learning rate is small; Adam moves each parameter about lr per step.
    mask_lr_scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.weights not in ("ones", "given", "activations", "learned"):
            raise ValueError(
                f"loss.sparsepo.weights={self.weights!r}: use ones, given, activations or learned"
            )
        if self.mask_lr_scale <= 0:
            raise ValueError(f"loss.sparsepo.mask_lr_scale={self.mask_lr_scale}: must be positive")


def _section(loss) -> SparsePOSection:
    """`loss.sparsepo`, where TDPO (token-level DPO) is all-ones weights with the KL term."""
    section = loss.section("sparsepo")
    if loss.names == ("tdpo",):
        return dataclasses.replace(section, weights="ones", kl=True)
    return section


def data_options(loss) -> dict[str, bool]:
    return {"token_weights": _section(loss).weights == "given"}


def _kl_BxL(policy_hidden, ref_hidden, decoder_params, ref_params, cfg, loss):
    """The token-level KL of policy from reference at each scored column (0 at t = 0)."""
    require_full_distribution(cfg.logps_kernel, "the token KL (loss.sparsepo.kl)")
    kl_BxL = token_kl(
        policy_hidden,
        head.unembedding_DxV(decoder_params, cfg).astype(cfg.dtype),
        ref_hidden,
        head.unembedding_DxV(ref_params, cfg).astype(cfg.dtype),
        final_logit_softcap=cfg.final_logit_softcap,
        token_chunk=loss.token_chunk,
        vocab_chunk=loss.vocab_chunk,
    )
    return scored_at_next(kl_BxL)


def _token_weights(section, head_module, params, batch, ref_layers, ref_acts, mask_BxL, rng):
    """The weights on each pair's reward and KL tokens (None: all ones)."""
    p = batch.pair_valid_P.shape[0]
    if section.weights == "ones":
        return None
    if section.weights == "given":
        if batch.token_weights_BxL is None:
            raise ValueError(
                "loss.sparsepo.weights=given: the batch carries no token weights (the data "
                "pipeline adds them for this method)"
            )
        w = batch.token_weights_BxL
        return TokenWeights(w[:p], w[p:], w[:p], w[p:])
    if section.weights == "activations":
        acts = {k: v[..., None] for k, v in ref_acts.items()}
        m = activation_mask(acts, mask_BxL)
        return TokenWeights(m[:p], m[p:], m[:p], m[p:])
    m_u, m_d = head_module.apply(
        {"params": params[MASK_HEAD_KEY]},
        ref_layers,
        deterministic=rng is None,  # eval passes no key
        rngs={} if rng is None else {"dropout": rng},
    )
    return TokenWeights(m_u[:p], m_u[p:], m_d[:p], m_d[p:])


def build(cfg, loss, sizes) -> Objective:
    section = _section(loss)
    head_module = MaskHead(mode=section.mask_mode, dropout_rate=section.mask_dropout)
    learned = section.weights == "learned"

    def fn(params, ref_params, batch, state, rng):
        require_unpacked(batch, "sparsepo")
        p = batch.pair_valid_P.shape[0]
        tokens, positions, segments = batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL
        decoder_params = policy_decoder(params, ref_params, rng)
        policy_hidden = decoder.apply(decoder_params, cfg, tokens, positions, segments)
        policy_logps = logps_from_hidden(decoder_params, cfg, loss, policy_hidden, tokens)
        ref_hidden, ref_layers, ref_acts = decoder.apply_with_intermediates(
            ref_params, cfg, tokens, positions, segments
        )
        ref_hidden, ref_layers, ref_acts = jax.lax.stop_gradient((ref_hidden, ref_layers, ref_acts))
        ref_logps = logps_from_hidden(ref_params, cfg, loss, ref_hidden, tokens)
        mask_BxL = (batch.loss_mask_BxL * (segments > 0)).astype(jnp.float32)
        kl_BxL = None
        if section.kl:
            kl_BxL = _kl_BxL(policy_hidden, ref_hidden, decoder_params, ref_params, cfg, loss)
        weights = _token_weights(section, head_module, params, batch, ref_layers, ref_acts, mask_BxL, rng)
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
        value, metrics = sparsepo_loss(pair_tokens, weights, section, beta=loss.beta)
        reward_w = weights.reward_chosen_BxL if weights is not None else 1.0
        reward_l = weights.reward_rejected_BxL if weights is not None else 1.0
        d = policy_logps - ref_logps
        margin_P = loss.beta * (
            jnp.sum(reward_w * d[:p] * mask_BxL[:p], -1) - jnp.sum(reward_l * d[p:] * mask_BxL[p:], -1)
        )
        return value, (metrics, state, pair_outputs(metrics, margin_P, batch, sizes["num_conditions"]))

    def init_parts(rng, decoder_params):
        if not learned:
            return {}
        hidden = jnp.zeros((cfg.num_layers, 1, 1, cfg.hidden_size), jnp.float32)
        return {MASK_HEAD_KEY: head_module.init(rng, hidden, deterministic=True)["params"]}

    def wrap(model_tx, lr):
        head_lr = lr if section.mask_lr_scale == 1.0 else (lambda count: section.mask_lr_scale * lr(count))
        return mask_head_optimizer(model_tx, head_lr, weight_decay=section.mask_weight_decay)

    return Objective(fn, True, init_parts=init_parts, wrap_optimizer=wrap if learned else None)


METHOD = Method(
    name="sparsepo",
    accepts=lambda loss: loss.names in (("sparsepo",), ("tdpo",)),
    build=build,
    section=SparsePOSection,
    no_precomputed_reference="it compares policy and reference token by token (and may read reference activations)",
    check=require_positive_beta,
    data_options=data_options,
)
