"""Each process's rows as its block of one global batch, and back to that process.

A sampling program runs over the run's whole mesh while every process holds prompts of
its own. The processes agree on one block shape (the most rows and the longest prompt
bucket of any process; rows rounded up so the batch axes divide the global batch), each
process's rows become the block its own devices hold, and each reads back only that
block. With one process the agreed shape is that process's own, so the program sees
exactly the rows it was given.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding

from alignjax.core.sharding import BATCH_AXES


def batch_shards_per_process(mesh: jax.sharding.Mesh, count: int | None = None) -> int:
    """How many distinct row blocks each of `count` processes (default: this run's) holds."""
    shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    count = jax.process_count() if count is None else count
    if shards % count:
        raise ValueError(
            f"mesh: data x fsdp = {shards} row shards cannot give each of the {count} processes rows of "
            "its own; sampling online needs mesh.data * mesh.fsdp to be a multiple of the process count"
        )
    return shards // count


def agree_block(rows: int, length: int, mesh: jax.sharding.Mesh) -> tuple[int, int]:
    """(rows, length) of every process's block: the largest of any process, rows rounded up to
    a multiple of the process's row shards. One small host exchange per call, not per token."""
    mine = np.array([rows, length], np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        mine = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2).max(axis=0)
    shards = batch_shards_per_process(mesh)
    return -(-int(mine[0]) // shards) * shards, int(mine[1])


def every_process(flag: bool) -> bool:
    """Whether `flag` holds on every process (a host exchange; the flag itself on one process)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.array([int(flag)]))))


def to_global(block, rows: NamedSharding) -> jax.Array:
    """This process's block of rows -> the global array laid out by `rows`, each block on its
    process's devices."""
    block = np.asarray(block)
    shape = (block.shape[0] * jax.process_count(), *block.shape[1:])
    return jax.make_array_from_process_local_data(rows, block, shape)


def block_owners(rows: NamedSharding, global_rows: int) -> list[int]:
    """The process whose devices hold each block of `global_rows / process_count` rows laid
    out by `rows`, in row order: block j draws with that process's key."""
    count = jax.process_count()
    per_block = global_rows // count
    spans: dict[int, list[int]] = {}
    for device, index in rows.devices_indices_map((global_rows,)).items():
        start, stop, _ = index[0].indices(global_rows)
        span = spans.setdefault(device.process_index, [start, stop])
        span[0], span[1] = min(span[0], start), max(span[1], stop)
    owners = [-1] * count
    for process, (start, stop) in spans.items():
        if stop - start != per_block or start % per_block:
            raise ValueError(
                f"mesh: process {process}'s devices hold rows [{start}, {stop}) of {global_rows}, not one "
                "block of its own; order the mesh so each process's devices are adjacent on data x fsdp"
            )
        owners[start // per_block] = process
    return owners


def own_rows(x: jax.Array) -> np.ndarray:
    """The rows of a global array that this process's devices hold, in row order."""
    shards = {}
    for shard in x.addressable_shards:
        start = shard.index[0].indices(x.shape[0])[0]
        if start not in shards:
            shards[start] = np.asarray(shard.data)
    return np.concatenate([shards[start] for start in sorted(shards)])
