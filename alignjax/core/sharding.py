"""The device mesh and the one table that maps logical axis names onto it.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and
optimizer state sharded across it), `sequence` (each row's tokens split across devices:
context parallelism, for sequences too long for one chip's activations; parameters and
optimizer state are sharded across it as across `fsdp`), `tensor` (heads, MLP and
vocabulary split across devices). The same config runs on one CPU, eight simulated devices or a pod: only the
axis sizes change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "sequence", "tensor")
SEQUENCE_AXIS = "sequence"
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axes. Dimensions that are small or sequential stay replicated.
LOGICAL_RULES: dict[str, Any] = {
    "batch": BATCH_AXES,
    "vocab": "tensor",
    # The devices of a sequence group hold the same rows, so like fsdp they split the
    # parameters instead of each keeping a copy (MaxText shards embed over its context axis).
    "embed": ("fsdp", "sequence"),
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "norm": None,
    "layers": None,
    "mask_layers": None,
    "user": None,
    "user_tokens": None,
    "lora_rank": None,  # adapters are sharded like their base weights on the other axes
    # Activations (MaxText's names), pinned inside the step so XLA keeps them laid out as
    # the parameters they meet are: rows over the batch axes, heads and MLP over `tensor`.
    "activation_batch": BATCH_AXES,
    "activation_length": "sequence",
    "activation_embed": None,
    "activation_heads": "tensor",
    "activation_kv_heads": "tensor",
    "activation_mlp": "tensor",
    "activation_vocab": "tensor",
}

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Axis sizes; -1 takes the devices the others leave."""

    data: int = 1
    fsdp: int = -1
    # Splits every row's tokens (context parallelism); attention then runs across the shards
    # as model.sequence_parallel says (all_gather or ring).
    sequence: int = 1
    tensor: int = 1
    # The TPU slice a recipe is written for (e.g. v5p:4x4x4); `alignjax compile-check` compiles
    # for it when no --topology is given. Training uses whatever devices it runs on.
    topology: str | None = None
    num_slices: int = 1


def resolve_axis_sizes(section: MeshSection, n_devices: int) -> tuple[int, int, int, int]:
    """(data, fsdp, sequence, tensor), the order of MESH_AXES."""
    sizes = [section.data, section.fsdp, section.sequence, section.tensor]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one of mesh.data/fsdp/sequence/tensor may be -1, got {sizes}")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if n_devices % fixed:
            raise ValueError(f"mesh: {n_devices} devices are not divisible by the fixed axes {sizes}")
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise ValueError(
            f"mesh: data={sizes[0]} x fsdp={sizes[1]} x sequence={sizes[2]} x tensor={sizes[3]} = "
            f"{math.prod(sizes)} "
            f"devices, but {n_devices} are available"
        )
    return tuple(sizes)


def make_mesh(section: MeshSection, devices: list | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_axis_sizes(section, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        # Simulated or irregular device sets have no physical topology to follow.
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _mesh_axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Map logical names to mesh axes; a dimension the mesh does not divide stays whole."""
    out = []
    used: set[str] = set()
    for name, dim in zip(logical, shape):
        axes = LOGICAL_RULES.get(name) if name is not None else None
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        # A sequence axis of size 1 splits nothing: left out, so a mesh without sequence
        # parallelism lays every array out exactly as before the axis existed.
        flat = tuple(a for a in flat if a != SEQUENCE_AXIS or mesh.shape.get(a, 1) > 1)
        if not flat or used & set(flat) or dim % _mesh_axis_size(mesh, flat):
            if flat and dim % _mesh_axis_size(mesh, flat):
                log.info("dimension %s=%d is not divisible by mesh axes %s; replicated", name, dim, flat)
            out.append(None)
            continue
        used |= set(flat)
        out.append(flat[0] if len(flat) == 1 else flat)
    return P(*out)


def constrain(x, *logical: str | None):
    """`x` pinned to the layout its logical axis names map to on the mesh in context
    (`jax.set_mesh`, as the trainer and compile-check trace); without one, `x` as it is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(P(*logical), x.shape, mesh))


def tree_shardings(logical_tree, shape_tree, mesh: Mesh):
    """NamedShardings for a pytree given its logical PartitionSpecs and shapes."""
    return jax.tree.map(
        lambda spec, s: NamedSharding(mesh, logical_to_spec(spec, tuple(s.shape), mesh)),
        logical_tree,
        shape_tree,
        is_leaf=lambda x: isinstance(x, P),
    )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_tree, mesh: Mesh):
    """Per-host NumPy arrays -> global jax.Arrays sharded over the batch axes."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), np.asarray(x)),
        local_tree,
    )


def maybe_initialize_distributed() -> None:
    """Join a multi-process run when one is configured, before any other JAX call.

    TPU pods and SLURM are detected by JAX itself; elsewhere the launch scripts set
    ALIGNJAX_COORDINATOR / ALIGNJAX_NUM_PROCESSES / ALIGNJAX_PROCESS_ID.
    """
    if jax.distributed.is_initialized():
        return
    coordinator = os.environ.get("ALIGNJAX_COORDINATOR")
    if coordinator and _cpu_only() and jax.config.jax_cpu_collectives_implementation in (None, "none"):
        # Without a collectives implementation the CPU client cannot run cross-process
        # computations (older JAX defaults to none); it must be chosen before initialize.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["ALIGNJAX_NUM_PROCESSES"]),
            process_id=int(os.environ["ALIGNJAX_PROCESS_ID"]),
        )
    elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("SLURM_NTASKS", "1") != "1":
        jax.distributed.initialize()


def _cpu_only() -> bool:
    """Whether JAX will run on CPU, decided without starting a backend (that would be too early)."""
    import importlib.util

    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
    return not any(importlib.util.find_spec(name) for name in plugins)
