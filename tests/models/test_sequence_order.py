"""The zig-zag token order: its layout, its inverse, the index table that moves soft
tokens, splash's positions, and the causal work it balances across shards."""

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.models import sequence_order, splash


def test_zigzag_order_gives_each_shard_an_early_and_a_late_chunk():
    x = np.arange(16)[None]
    order = np.asarray(sequence_order.load_balance_order(x, 2))
    # 4 chunks of 4: shard 0 holds chunks 0 and 3, shard 1 chunks 1 and 2.
    np.testing.assert_array_equal(order[0], [0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(np.asarray(sequence_order.natural_order(order, 2)), x)
    where = sequence_order.balanced_index(16, 2)
    np.testing.assert_array_equal(order[0][where], x[0])
    # Built inside jit too (P-DPO moves its soft-token indices with it in the step).
    np.testing.assert_array_equal(jax.jit(lambda: jnp.asarray(sequence_order.balanced_index(16, 2)))(), where)
    # Trailing dimensions ride along.
    y = np.random.default_rng(0).normal(size=(2, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(sequence_order.natural_order(sequence_order.load_balance_order(y, 2), 2)), y
    )


def test_splash_is_told_the_zigzag_positions():
    """The positions the splash kernel masks sequence-parallel rows by are the zig-zag
    order's (built in NumPy on the host, like splash's mask tables)."""
    for length, shards in [(16, 2), (64, 4)]:
        want = np.asarray(sequence_order.load_balance_order(np.arange(length)[None], shards))[0]
        np.testing.assert_array_equal(splash.zigzag_positions(length, shards), want)


def test_zigzag_balances_causal_work_across_shards():
    """(query, key) pairs the causal mask keeps, per shard: equal in zig-zag order, and
    6.6x apart from the first shard to the last in the natural order (4 shards)."""
    length, shards = 64, 4
    positions = np.arange(length)

    def work(order_L):
        keys_seen = order_L[:, None] + 1  # a query at position p sees p + 1 keys
        return [int(keys_seen[i].sum()) for i in np.split(np.arange(length), shards)]

    natural = work(positions)
    balanced = work(np.asarray(sequence_order.load_balance_order(positions[None], shards))[0])
    assert len(set(balanced)) == 1 and sum(balanced) == sum(natural)
    assert natural == [136, 392, 648, 904] and balanced == [520] * 4
