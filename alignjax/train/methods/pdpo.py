"""P-DPO (docs/methods.md, section 3): a user model's soft tokens after BOS, trained with the policy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from alignjax.data import ops as data_ops
from alignjax.losses.personalized import PDPOConfig, PersonalizedLogps, pdpo_loss
from alignjax.models import decoder
from alignjax.models.mask_head import mask_head_optimizer
from alignjax.models.user_model import USER_MODEL_KEY, UserModel, vocab_rows_init
from alignjax.train.methods.common import (
    forward_logps,
    pair_logps,
    pair_outputs,
    policy_decoder,
    require_positive_beta,
    require_unpacked,
)
from alignjax.train.methods.registry import Method, Objective


@dataclasses.dataclass(frozen=True)
class PDPOSection(PDPOConfig):
    """`loss.pdpo`: the loss's mix of user and generic terms (`PDPOConfig.alpha`), the user
    model, and the user-token slots its records carry."""

    # User soft-token slots right after BOS in every sequence (the data pipeline reserves
    # them), filled by the user model.
    n_user_tokens: int = 0
    user_form: str = "individual"  # individual (e_0 + o_i), direct (o_i) or cluster
    num_clusters: int = 5
    # TRL's rpo_alpha: adds this weight times the token-mean NLL of the chosen responses
    # given the pair's user tokens, so generation with the soft tokens stays fluent.
    rpo_alpha: float = 0.0
    # The user model's learning rate as a multiple of the stage's: soft prompts learn at
    # rates far above those of the model they steer (prompt tuning's experience), and at
    # the model's rate the users' tokens barely move in a short preference stage.
    user_lr_scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.n_user_tokens < 0:
            raise ValueError(f"loss.pdpo.n_user_tokens={self.n_user_tokens}: must be >= 0")
        if self.user_lr_scale <= 0:
            raise ValueError(f"loss.pdpo.user_lr_scale={self.user_lr_scale}: must be positive")


def data_options(loss) -> dict[str, int]:
    return {"n_user_tokens": loss.section("pdpo").n_user_tokens}


def check(loss) -> None:
    require_positive_beta(loss)
    if not 0.0 <= loss.label_smoothing < 0.5:
        raise ValueError(f"loss.label_smoothing={loss.label_smoothing} must be in [0, 0.5)")
    if loss.section("pdpo").n_user_tokens <= 0:
        raise ValueError("loss.type=pdpo needs loss.pdpo.n_user_tokens > 0 (the soft-token slots after BOS)")


def _embed_scale(cfg):
    # Soft tokens replace rows of the *scaled* input embeddings (see ExtraEmbeddings).
    return cfg.hidden_size**0.5 if cfg.scale_embeddings else 1.0


def _normal(key, shape, dtype=jnp.float32):
    return 0.02 * jax.random.normal(key, shape, dtype)


def build(cfg, loss, sizes) -> Objective:
    section = loss.section("pdpo")
    num_users = sizes["num_users"]
    n_tokens = sizes["n_user_tokens"]  # loss.pdpo.n_user_tokens, as the stage's data was built

    def user_module(decoder_for_init=None):
        init = (
            _normal
            if decoder_for_init is None
            else vocab_rows_init(decoder_for_init["embedding"] * _embed_scale(cfg))
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
        require_unpacked(batch, "pdpo")
        p = batch.pair_valid_P.shape[0]
        users_P = batch.user_index_P
        # Slots are contiguous, so their row indices are the first n_tokens of the mask.
        index_BxT = jnp.argsort(1 - batch.user_slot_mask_BxL, axis=1, stable=True)[:, :n_tokens]
        module = user_module()
        user_params = {"params": params[USER_MODEL_KEY]}
        user_embeds = module.apply(user_params, jnp.concatenate([users_P, users_P]))
        generic_embeds = module.apply(user_params, jnp.zeros((2 * p,), jnp.int32))
        both = jax.tree.map(lambda x: jnp.concatenate([x, x]), batch)  # one forward for both passes
        extra = decoder.ExtraEmbeddings(
            jnp.concatenate([user_embeds, generic_embeds]), jnp.concatenate([index_BxT, index_BxT])
        )
        logps = forward_logps(policy_decoder(params, ref_params, rng), cfg, loss, both, extra)
        user_c, user_r = data_ops.pair_sums(logps[: 2 * p], batch)
        gen_c, gen_r = data_ops.pair_sums(logps[2 * p :], batch)
        ref_batch = data_ops.remove_user_slots(batch)
        ref = jax.lax.stop_gradient(pair_logps(ref_params, cfg, loss, ref_batch))
        value, metrics = pdpo_loss(
            PersonalizedLogps(
                users_P, user_c, user_r, gen_c, gen_r, ref.chosen_logps_B, ref.rejected_logps_B
            ),
            section,
            num_users=num_users,
            beta=loss.beta,
            label_smoothing=loss.label_smoothing,
        )
        if section.rpo_alpha:
            # Padding slots and invalid pairs have no response tokens: they add nothing.
            chosen_len_P, _ = data_ops.pair_sums(jnp.ones_like(logps[: 2 * p]), batch)
            nll = -jnp.sum(user_c) / jnp.maximum(jnp.sum(chosen_len_P), 1.0)
            value = value + section.rpo_alpha * nll
            metrics = {**metrics, "nll_loss": jax.lax.stop_gradient(nll)}
        margin_P = loss.beta * ((user_c - ref.chosen_logps_B) - (user_r - ref.rejected_logps_B))
        return value, (metrics, state, pair_outputs(metrics, margin_P, batch, sizes["num_conditions"]))

    def init_parts(rng, decoder_params):
        dummy = jnp.zeros((1,), jnp.int32)
        return {USER_MODEL_KEY: user_module(decoder_params).init(rng, dummy)["params"]}

    def wrap(model_tx, lr):
        # Its own AdamW (no weight decay: it would pull every user toward the generic one).
        return mask_head_optimizer(
            model_tx, lambda count: section.user_lr_scale * lr(count), weight_decay=0.0, key=USER_MODEL_KEY
        )

    return Objective(
        fn, True, init_parts=init_parts, wrap_optimizer=wrap if section.user_lr_scale != 1.0 else None
    )


METHOD = Method(
    name="pdpo",
    accepts=lambda loss: loss.names == ("pdpo",),
    build=build,
    section=PDPOSection,
    no_precomputed_reference="its reference sees rows without the user's soft-token slots, computed in the step",
    check=check,
    data_options=data_options,
)
