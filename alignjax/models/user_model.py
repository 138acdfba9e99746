"""P-DPO user model: user id -> T_u soft tokens spliced in after BOS.

Forms (docs/methods.md, section 3):
  "individual": e_i = e_0 + o_i (generic tokens plus a per-user offset; o_0 = 0)
  "direct":     e_i = o_i       (a free table; row 0 is the generic user)
  "cluster":    e_i = sum_c softmax(W_i)_c z_c over K prototypes z
Id 0 is the generic user; ids that are negative or >= num_users (users unseen in
training) map to 0. The decoder consumes the result as
`extra_embeddings=(embeds_BxTxD, index_BxT)`, with `soft_token_index` giving the T_u
placeholder positions right after BOS that the data pipeline reserved.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]

FORMS = ("individual", "direct", "cluster")
# Where the user model sits in the trained parameters, beside "decoder".
USER_MODEL_KEY = "user_model"


def vocab_rows_init(vocab_embedding_VxD: jax.Array) -> Initializer:
    """Initializer filling [..., D] with randomly chosen rows of the vocabulary table.

    Soft tokens that start as real token embeddings sit where the LM expects inputs,
    which is what the P-DPO paper does; rows are drawn without replacement when the
    vocabulary is large enough.
    """
    vocab, width = vocab_embedding_VxD.shape

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        if shape[-1] != width:
            raise ValueError(
                f"soft tokens of width {shape[-1]} cannot start from vocabulary "
                f"rows of width {width}; set UserModel.width={width}."
            )
        rows = 1
        for n in shape[:-1]:
            rows *= n
        ids = jax.random.choice(key, vocab, (rows,), replace=rows > vocab)
        return jnp.take(vocab_embedding_VxD, ids, axis=0).reshape(shape).astype(dtype)

    return init


def clamp_user_ids(user_ids_B: jax.Array, num_users: int) -> jax.Array:
    """Unseen (>= num_users) and negative ids become 0, the generic user."""
    user_ids_B = jnp.asarray(user_ids_B, jnp.int32)
    return jnp.where((user_ids_B >= 0) & (user_ids_B < num_users), user_ids_B, 0)


def soft_token_index(bos_index_B: jax.Array, num_tokens: int) -> jax.Array:
    """Positions [B, T] of the T_u placeholder slots right after each row's BOS."""
    return jnp.asarray(bos_index_B, jnp.int32)[:, None] + 1 + jnp.arange(num_tokens)[None, :]


class UserModel(nn.Module):
    """Maps user ids [B] to soft tokens [B, num_tokens, width].

    num_users counts the generic user 0. token_init initialises every embedding-like
    table (generic tokens, direct table, prototypes); use
    `vocab_rows_init(embedding_VxD)` as the paper does. Per-user offsets start at 0
    and cluster mixing logits at 0 (uniform mixture), so every user starts as the
    generic one and diverges only through its own gradient.
    """

    num_users: int
    width: int
    num_tokens: int = 10
    form: str = "individual"
    num_clusters: int = 5
    token_init: Initializer = nn.initializers.normal(0.02)
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, user_ids_B: jax.Array) -> jax.Array:
        if self.form not in FORMS:
            raise ValueError(f"UserModel.form={self.form!r}; choose one of {FORMS}.")
        if self.num_users < 1:
            raise ValueError("UserModel.num_users must count at least the generic user 0.")
        ids_B = clamp_user_ids(user_ids_B, self.num_users)
        tokens = (self.num_tokens, self.width)
        if self.form == "individual":
            generic_TxD = self.param("generic", self.token_init, tokens, self.param_dtype)
            offsets_UxTxD = self.param(
                "offsets", nn.initializers.zeros, (self.num_users,) + tokens, self.param_dtype
            )
            # User 0 *is* the generic embedding: its offset row is never used.
            offset_BxTxD = jnp.where((ids_B != 0)[:, None, None], offsets_UxTxD[ids_B], 0.0)
            return generic_TxD[None] + offset_BxTxD
        if self.form == "direct":
            table_UxTxD = self.param("tokens", self.token_init, (self.num_users,) + tokens, self.param_dtype)
            return table_UxTxD[ids_B]
        prototypes_KxTxD = self.param(
            "prototypes", self.token_init, (self.num_clusters,) + tokens, self.param_dtype
        )
        mix_UxK = self.param(
            "mix_logits", nn.initializers.zeros, (self.num_users, self.num_clusters), self.param_dtype
        )
        weights_BxK = jax.nn.softmax(mix_UxK[ids_B], axis=-1)
        return jnp.einsum("bk,ktd->btd", weights_BxK, prototypes_KxTxD)
