"""The zig-zag token order that balances sequence-parallel attention across shards.

Under a causal mask, the shard holding a row's last tokens has the most (query, key)
pairs to compute. `load_balance_order` gives each shard an early and a late chunk of the
row instead, so every shard skips as much as every other. The decoder permutes rows into
this order on entry and back on exit; attention masks by position, so it gives the same
result in any token order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.core.sharding import SEQUENCE_AXIS
from alignjax.models.config import ModelConfig


def sequence_shards() -> int:
    """How many shards the mesh in context (`jax.set_mesh`) splits a row into; 1 without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or SEQUENCE_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[SEQUENCE_AXIS]


def balances(length: int, shards: int) -> bool:
    """Whether a row of `length` tokens can be cut into the 2 x shards chunks zig-zag needs."""
    return shards > 1 and length % (2 * shards) == 0


def balance_shards(cfg: ModelConfig, length: int) -> int:
    """How many sequence shards rows are zig-zagged across on the way in (0: none)."""
    shards = sequence_shards()
    return shards if cfg.sequence_load_balance and balances(length, shards) else 0


def load_balance_order(x_BxLx, shards: int):
    """Rows in zig-zag order: cut into 2N chunks, shard r holds chunks r and 2N-1-r, so under
    a causal mask every shard has the same share of (query, key) pairs to compute."""
    b, l = x_BxLx.shape[:2]
    rest = x_BxLx.shape[2:]
    halves = x_BxLx.reshape(b, 2, shards, l // (2 * shards), *rest)
    pairs = jnp.stack([halves[:, 0], jnp.flip(halves[:, 1], axis=1)], axis=2)
    return pairs.reshape(b, l, *rest)


def natural_order(x_BxLx, shards: int):
    """Undoes `load_balance_order`."""
    b, l = x_BxLx.shape[:2]
    rest = x_BxLx.shape[2:]
    pairs = x_BxLx.reshape(b, shards, 2, l // (2 * shards), *rest)
    halves = jnp.concatenate([pairs[:, :, 0], jnp.flip(pairs[:, :, 1], axis=1)], axis=1)
    return halves.reshape(b, l, *rest)


def balanced_index(length: int, shards: int) -> np.ndarray:
    """[L]: where token t of a row sits in zig-zag order (to move soft-token indices).

    `natural_order` of 0..L-1 in NumPy: a constant table, so it is built the same inside
    jit (where jnp would trace it) as outside."""
    pairs = np.arange(length).reshape(shards, 2, length // (2 * shards))
    return np.concatenate([pairs[:, 0], pairs[::-1, 1]]).reshape(length)
