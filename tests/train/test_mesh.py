"""One config, any mesh: 8 simulated devices (fsdp=4 x tensor=2) train like one device."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import train_helpers as th
from alignjax.core import sharding


@pytest.mark.slow
def test_fsdp4_tensor2_on_8_devices_matches_one_device(reference_run, config_for, log_path, compile_cache):
    config, run_dir = config_for("mesh8")
    th.run(
        config,
        ["mesh.fsdp=4", "mesh.tensor=2"],
        devices=8,
        cache_dir=compile_cache,
        log_path=log_path("mesh8"),
    )

    losses = th.losses(run_dir)
    steps = range(1, th.TOTAL_STEPS + 1)
    assert sorted(losses) == list(steps)
    th.assert_losses_match(losses, reference_run.losses, steps, 1e-4, "8 devices vs 1 device")
    th.assert_eval_match(run_dir, reference_run.run_dir, 1e-4, "8 devices vs 1 device")

    # The equality above would also hold if everything had silently been replicated:
    # the checkpoint records how each array was actually laid out when it was saved.
    ckpt = os.path.join(run_dir, "checkpoints", str(th.TOTAL_STEPS))
    params = th.saved_specs(os.path.join(ckpt, "params"))
    for mesh_shape, _ in params.values():
        assert mesh_shape == {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 2}
    # Training checkpoints group parameters as {"decoder": ..., <part>: ...}.
    specs = {path.removeprefix("['decoder']"): spec for path, (_, spec) in params.items()}
    assert specs["['layers_0']['gate']['kernel']"] == ("fsdp", "tensor")  # embed x mlp
    assert specs["['layers_1']['down']['kernel']"] == ("tensor", "fsdp")  # mlp x embed
    assert specs["['layers_0']['q']['kernel']"][:2] == ("fsdp", "tensor")  # embed x q_heads
    assert specs["['layers_0']['k']['kernel']"][:2] == ("fsdp", "tensor")  # embed x kv_heads (2)
    # Every matrix is split over the fsdp axis (the vocabulary, 263 rows, divides by neither).
    matrices = {path: spec for path, spec in specs.items() if len(spec) >= 2}
    assert matrices and all("fsdp" in spec for spec in matrices.values()), matrices

    # Adam's moments mirror their parameter's sharding.
    opt = th.saved_specs(os.path.join(ckpt, "opt_state"))
    for path, spec in specs.items():
        grouped = "['decoder']" + path
        moments = [s for p, (_, s) in opt.items() if p.endswith(("['mu']" + grouped, "['nu']" + grouped))]
        assert len(moments) == 2 and all(m == spec for m in moments), (path, spec, moments)

    # The DPO stage's frozen reference is sharded the same way.
    reference = th.saved_specs(os.path.join(run_dir, "reference", "dpo", "0", "params"))
    assert {path: spec for path, (_, spec) in reference.items()} == specs


def test_mesh_errors_name_the_axes_and_device_count():
    with pytest.raises(
        ValueError, match=r"data=1 x fsdp=4 x sequence=1 x tensor=4 = 16 devices, but 8 are available"
    ):
        sharding.resolve_axis_sizes(sharding.MeshSection(data=1, fsdp=4, tensor=4), 8)
    with pytest.raises(ValueError, match="at most one of mesh.data/fsdp/sequence/tensor may be -1"):
        sharding.resolve_axis_sizes(sharding.MeshSection(data=-1, fsdp=-1, tensor=1), 8)
    assert sharding.resolve_axis_sizes(sharding.MeshSection(data=1, fsdp=-1, tensor=2), 8) == (1, 4, 1, 2)


def test_logical_axes_map_to_mesh_axes_and_fall_back_to_replicated():
    mesh = jax.sharding.Mesh(
        np.asarray(jax.devices()[:1]).reshape((1,) * len(sharding.MESH_AXES)), sharding.MESH_AXES
    )
    # With one device every axis divides; names map through the rules table.
    assert sharding.logical_to_spec(P("embed", "mlp"), (64, 128), mesh) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(P("batch", None), (8, 16), mesh) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec(P("layers", "norm"), (2, 64), mesh) == P(None, None)


def test_cpu_multiprocess_uses_gloo_collectives(monkeypatch):
    """On CPU a multi-process run needs gloo before jax.distributed.initialize."""
    calls = []
    monkeypatch.setenv("ALIGNJAX_COORDINATOR", "127.0.0.1:1")
    monkeypatch.setenv("ALIGNJAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("ALIGNJAX_PROCESS_ID", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        jax.distributed,
        "initialize",
        lambda **kw: calls.append((jax.config.jax_cpu_collectives_implementation, kw)),
    )
    previous = jax.config.jax_cpu_collectives_implementation
    try:
        jax.config.update("jax_cpu_collectives_implementation", None)  # older JAX's default
        sharding.maybe_initialize_distributed()
    finally:
        jax.config.update("jax_cpu_collectives_implementation", previous)
    assert calls == [("gloo", {"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": 1})]
