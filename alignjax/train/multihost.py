"""Assembling global batches and agreeing across processes (multi-host training).

Each process reads its own shard of the data; these functions turn its local NumPy
batch into the global jax.Array batch laid out as if one process had read every row,
and make processes agree (padded length, whether to run a step, the data states a
checkpoint saves). With one process they are plain conversions.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import numpy as np

from alignjax.core import sharding


def primary_decides(flag: bool) -> bool:
    """Process 0's value of `flag`, on every process.

    For decisions read from shared storage ("is the reference saved yet?") that choose
    which collective comes next: each process reading the disk for itself can see it before
    and after another process writes, and the processes then enter different barriers.
    """
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def gather_states(state: dict) -> list[dict]:
    """Every process's data-iterator state, so process 0's checkpoint holds them all."""
    return gather_json(state)


def gather_json(value) -> list:
    """Every process's JSON-able `value`, in process order, on every process."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(value).encode(), np.uint8)
    longest = int(np.max(multihost_utils.process_allgather(np.array([blob.size]))))
    padded = np.zeros(longest, np.uint8)
    padded[: blob.size] = blob
    gathered = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row).rstrip(b"\0").decode()) for row in np.asarray(gathered).reshape(-1, longest)
    ]


def agree_on_length(local, pad_id: int):
    """Hosts pick length buckets from their own rows; a global array needs one length."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    length = local.tokens_BxL.shape[1]
    longest = int(np.max(multihost_utils.process_allgather(np.array([length]))))
    if longest == length:
        return local
    changes = {}
    for f in dataclasses.fields(local):
        value = getattr(local, f.name)
        if f.name.endswith("_BxL") and value is not None:
            fill = pad_id if f.name == "tokens_BxL" else 0
            changes[f.name] = np.pad(value, ((0, 0), (0, longest - length)), constant_values=fill)
    return dataclasses.replace(local, **changes)


def global_batch(local, mesh: jax.sharding.Mesh, pad_id: int):
    """This process's batch -> the global batch, laid out as if one process had read every row.

    Each process numbers its pairs / examples from 0, so those indices are offset by the
    processes before it. Two layouts are positional: padded pairs (rows [0, P) chosen,
    [P, 2P) rejected, pair i in rows i and P + i) and CUT's two views (rows e and E + e);
    the processes' blocks of rows are regrouped half by half so that holds globally too.
    Per-pair arrays come out in process order: process q's pairs follow process q - 1's.
    """
    if getattr(local, "record_key_P", None) is not None:
        # Host bookkeeping (int64, which the devices would truncate to int32): the reference
        # log-probs it looks up are attached already.
        local = dataclasses.replace(local, record_key_P=None)
    local = agree_on_length(local, pad_id)
    count = jax.process_count()
    if count == 1:
        return sharding.global_batch(local, mesh)
    offsets = {"segment_pair_index_BxS": "pair_valid_P", "segment_example_index_BxS": "example_valid_E"}
    changes = {}
    for name, counted in offsets.items():
        value = getattr(local, name, None)
        if value is not None:
            changes[name] = value + jax.process_index() * len(getattr(local, counted))
    local = dataclasses.replace(local, **changes)
    batch = sharding.global_batch(local, mesh)
    if not getattr(local, "rows_in_halves", False):
        return batch
    row_fields = {
        f.name: getattr(batch, f.name)
        for f in dataclasses.fields(batch)
        if f.name.endswith(("_BxL", "_BxS")) and getattr(batch, f.name) is not None
    }
    return dataclasses.replace(batch, **_regroup_rows(row_fields, count, mesh))


@functools.partial(jax.jit, static_argnames=("count", "mesh"))
def _regroup_rows(rows_by_name, count: int, mesh):
    """Rows [c_0, r_0, c_1, r_1, ...] (process q's halves c_q, r_q) -> [c_0, c_1, ..., r_0, r_1, ...]."""
    out = {}
    for name, x in rows_by_name.items():
        per_process = x.shape[0] // count
        half = per_process // 2
        first = [q * per_process + np.arange(half) for q in range(count)]
        second = [q * per_process + half + np.arange(half) for q in range(count)]
        order = np.concatenate(first + second)
        out[name] = jax.lax.with_sharding_constraint(x[order], sharding.batch_sharding(mesh, x.ndim))
    return out


def to_host(x) -> np.ndarray:
    """A global array's value on this host, gathering shards other processes hold."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def everywhere(ok: bool) -> bool:
    """Whether `ok` holds on every process (compiled steps are collective: all or none run)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.array([int(ok)]))))


def anywhere(flag: bool) -> bool:
    """Whether `flag` holds on at least one process."""
    return not everywhere(not flag)


def gather_host_values(x_N: np.ndarray) -> np.ndarray:
    """Every process's host values, concatenated in process order (int64 travels as int32
    pairs: JAX without x64 would truncate it)."""
    if jax.process_count() == 1:
        return x_N
    from jax.experimental import multihost_utils

    if x_N.dtype == np.int64:
        halves = np.ascontiguousarray(x_N).view(np.int32)
        return np.asarray(multihost_utils.process_allgather(halves, tiled=True)).view(np.int64)
    return np.asarray(multihost_utils.process_allgather(x_N, tiled=True))
