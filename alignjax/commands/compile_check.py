"""`alignjax compile-check CONFIG [key=value ...] [--topology v5p:2x2x1] [--fit]`.

Lowers and compiles the exact step each stage would run (the method's loss, gradients,
the optimizer update, the reference forward, the config's mesh and shardings) against a
TPU topology's devices from any host (`jax.experimental.topologies`, with `jax[tpu]`
installed), or against the local devices, and reports per-chip memory from the compiled
program: nothing is allocated and no weights are read. The step compiled is one
micro-batch and the update fused, which holds every buffer a step ever holds at once
(parameters, optimizer state, reference, gradients, activations).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import sys
from typing import Any

import jax
import numpy as np

from alignjax.core import hub, sharding
from alignjax.core.errors import run_command
from alignjax.core.hardware import GiB, chip
from alignjax.data.shapes import largest_batch
from alignjax.models import attention, decoder, quantize
from alignjax.models.config import ModelConfig
from alignjax.models.families import load_hf_config_dict, model_config_from_hf
from alignjax.models.flops import step_flops
from alignjax.models.presets import preset_config
from alignjax.train.config import Stage, TrainConfig, data_config, stages
from alignjax.train.datasets import micro_batch_size
from alignjax.train.reference import abstract_arrays
from alignjax.train.stage import plan_stage
from alignjax.train.step import fused_step

log = logging.getLogger("alignjax.compile_check")


def target_devices(topology: str | None, num_slices: int = 1) -> list:
    if topology is None:
        return jax.devices()
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=num_slices)
    except Exception as e:  # no libtpu, or a name it does not know
        raise ValueError(
            f"--topology {topology}: cannot describe it ({type(e).__name__}: {e}); install jax[tpu] "
            "(pip install -e '.[tpu]') and name a slice as GENERATION:SHAPE, e.g. v5p:2x2x1, v5e:4x4, v6e:2x4"
        ) from None
    return list(desc.devices)


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The model's config alone: from the preset (its own vocabulary) or `config.json`."""
    section = cfg.model
    if (section.hf_path is None) == (section.preset is None):
        raise ValueError("set exactly one of model.hf_path and model.preset")
    hf = (
        preset_config(section.preset, **section.preset_overrides)
        if section.preset
        else load_hf_config_dict(hub.model_dir(section.hf_path, revision=section.revision, weights=False))
    )
    return model_config_from_hf(hf, **section.execution())


def _bytes_per_chip(shapes, shardings) -> int:
    total = 0
    for shape, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
        total += math.prod(sh.shard_shape(shape.shape)) * np.dtype(shape.dtype).itemsize
    return total


@dataclasses.dataclass
class StageReport:
    stage: str
    chip: str
    devices: int
    rows_per_chip: float
    tokens_per_chip: float
    params: int
    opt_state: int
    reference: int
    batch: int
    temporaries: int
    total: int
    hbm: int | None
    model_flops: float
    compiler_flops: float | None
    scanned: bool  # XLA's cost analysis counts a scanned layer's body once
    lora: bool = False  # the reference row is then the frozen base the adapters train on
    # The compiler's refusal when the program cannot fit at all (no memory analysis then).
    compiler_error: str | None = None

    @property
    def fits(self) -> bool:
        return self.compiler_error is None and (self.hbm is None or self.total <= self.hbm)

    def lines(self) -> list[str]:
        g = lambda b: f"{b / GiB:8.2f} GiB"  # noqa: E731
        hbm = f"{self.hbm / GiB:.2f} GiB" if self.hbm else "unknown (host)"
        spare = f", {100 * (1 - self.total / self.hbm):.1f}% spare" if self.hbm else ""
        flops = f"{self.model_flops:.3e} model FLOPs per step"
        if self.compiler_flops:
            once = ", scanned layers once" if self.scanned else ""
            flops += f" (the compiler's count{once}: {self.compiler_flops * self.devices:.3e})"
        head = (
            f"stage {self.stage}: {self.devices} x {self.chip}, {self.rows_per_chip:g} rows "
            f"({self.tokens_per_chip:,.0f} tokens) per chip per micro-batch"
        )
        if self.compiler_error is not None:
            return [
                head,
                f"  DOES NOT FIT: {self.compiler_error}",
                f"  total         {g(self.total)}   (at least)",
            ]
        return [
            head,
            f"  parameters    {g(self.params)}",
            f"  optimizer     {g(self.opt_state)}",
            f"  {'frozen base' if self.lora else 'reference  '}   {g(self.reference)}",
            f"  batch         {g(self.batch)}",
            f"  temporaries   {g(self.temporaries)}   (gradients, activations, attention; compiler)",
            f"  total         {g(self.total)}   of {hbm}{spare}: {'fits' if self.fits else 'DOES NOT FIT'}",
            f"  {flops}",
        ]


def check_stage(stage: Stage, devices: list, model_cfg: ModelConfig) -> StageReport:
    """Compile one stage's step for `devices` and measure it."""
    scfg = stage.config
    mesh = sharding.make_mesh(scfg.mesh, devices)
    decoder_shapes = jax.eval_shape(lambda: decoder.init_params(model_cfg, jax.random.key(0)))
    decoder_shardings = sharding.tree_shardings(decoder.logical_axes(model_cfg), decoder_shapes, mesh)
    dcfg = data_config(scfg, [], micro_batch_size(scfg))
    sizes = {"num_conditions": 0, "num_users": 1, "n_user_tokens": dcfg.n_user_tokens}
    plan = plan_stage(model_cfg, decoder_shapes, decoder_shardings, mesh, stage, sizes)
    method = plan.method
    host_batch = largest_batch(dcfg, dcfg.batch_size, method.batch_record_type)
    host_batch = dataclasses.replace(
        host_batch, **({"record_key_P": None} if hasattr(host_batch, "record_key_P") else {})
    )
    if method.reads_reference_table(scfg.loss) and scfg.loss.reference == "precomputed":
        p = host_batch.pair_valid_P.shape[0]
        host_batch = dataclasses.replace(
            host_batch,
            ref_chosen_logps_P=np.zeros(p, np.float32),
            ref_rejected_logps_P=np.zeros(p, np.float32),
        )
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh, x.ndim)),
        host_batch,
    )
    needs_ref = plan.objective.needs_reference and not (scfg.loss.reference == "precomputed")
    # A LoRA step always holds the frozen base (the reference, adapters off, of a fresh stage).
    needs_ref = needs_ref or bool(model_cfg.lora_rank)
    ref_dtype = np.dtype(jax.numpy.dtype(scfg.model.effective_reference_dtype))
    ref_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, ref_dtype), decoder_shapes)
    ref_shardings = decoder_shardings
    if model_cfg.lora_rank:  # the frozen base as the run holds it (quantized for QLoRA)
        kind = scfg.model.lora.quantize_base
        ref_shapes = jax.eval_shape(lambda p: quantize.frozen(p, kind, ref_dtype), decoder_shapes)
        axes = quantize.frozen_axes(decoder.logical_axes(model_cfg), kind)
        ref_shardings = sharding.tree_shardings(axes, ref_shapes, mesh)
    ref = abstract_arrays(ref_shapes, ref_shardings) if needs_ref else None
    replicated = sharding.replicated(mesh)
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)  # noqa: E731
    loss_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=replicated),
        plan.objective.init_state(),
    )
    counters = {"step": scalar(np.int32), "skipped": scalar(np.int32)}
    rng = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated)

    params = abstract_arrays(plan.param_shapes, plan.param_shardings)
    opt_state = abstract_arrays(plan.opt_shapes, plan.opt_shardings)
    jitted = jax.jit(
        fused_step(plan.objective, plan.tx),
        donate_argnums=(0, 1),
        out_shardings=((plan.param_shardings, plan.opt_shardings, None, None), None),
    )
    platform = devices[0].platform
    with attention.target_platform(platform), jax.set_mesh(mesh):
        lowered = jitted.lower(params, opt_state, ref, batch, loss_state, rng, counters, scalar(np.int32))
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses a program whose temporaries alone exceed HBM.
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            compiled, refusal = None, str(e).split("RESOURCE_EXHAUSTED: ", 1)[-1].strip()
    entry = chip(devices[0].device_kind)
    n = len(devices)
    flops = step_flops(model_cfg, *host_batch.tokens_BxL.shape, with_reference=ref is not None)
    rows = host_batch.tokens_BxL.shape[0]
    sized = dict(
        stage=stage.name,
        chip=entry.name if entry else devices[0].device_kind,
        devices=n,
        rows_per_chip=rows / n,
        tokens_per_chip=flops.tokens / n,
        params=_bytes_per_chip(plan.param_shapes, plan.param_shardings),
        opt_state=_bytes_per_chip(plan.opt_shapes, plan.opt_shardings),
        reference=_bytes_per_chip(ref_shapes, ref_shardings) if ref is not None else 0,
        batch=_bytes_per_chip(batch, jax.tree.map(lambda x: x.sharding, batch)),
        hbm=entry.hbm_bytes if entry and platform != "cpu" else None,
        model_flops=flops.total,
        scanned=model_cfg.scan_layers,
        lora=bool(model_cfg.lora_rank),
    )
    if compiled is None:
        needed = re.search(r"HLO temporaries \(([0-9.]+)G\)", refusal)
        temporaries = int(float(needed.group(1)) * GiB) if needed else 0
        persistent = sized["params"] + sized["opt_state"] + sized["reference"] + sized["batch"]
        return StageReport(
            **sized,
            temporaries=temporaries,
            total=persistent + temporaries,
            compiler_flops=None,
            compiler_error=refusal,
        )
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    return StageReport(
        **sized, temporaries=memory.temp_size_in_bytes, total=total, compiler_flops=(cost or {}).get("flops")
    )


def compile_check(cfg: TrainConfig, devices: list) -> list[StageReport]:
    return [check_stage(stage, devices, model_config(stage.config)) for stage in stages(cfg)]


# Most saved first: the first that fits recomputes the least.
FIT_REMAT_POLICIES = ("none", "save_dots", "save_dot_except_mlp", "save_qkv_proj", "minimal")


def fit_stage(stage: Stage, devices: list) -> tuple[dict[str, Any], StageReport] | None:
    """The overrides that fit the largest micro-batch per chip (fewest `train.grad_accum`),
    with the remat policy that keeps the most; None when nothing fits."""
    scfg = stage.config
    mesh_rows = math.prod(sharding.resolve_axis_sizes(scfg.mesh, len(devices))[:2])
    accums = [g for g in range(1, scfg.train.batch_size + 1) if scfg.train.batch_size % g == 0]
    accums = [g for g in accums if (scfg.train.batch_size // g) % mesh_rows == 0]
    for grad_accum in accums:
        for remat in FIT_REMAT_POLICIES:
            config = dataclasses.replace(
                scfg,
                model=dataclasses.replace(scfg.model, remat_policy=remat),
                train=dataclasses.replace(scfg.train, grad_accum=grad_accum),
            )
            candidate = dataclasses.replace(stage, config=config)
            report = check_stage(candidate, devices, model_config(config))
            log.warning(
                "fit %s: grad_accum=%d remat_policy=%s: %.2f GiB%s",
                stage.name,
                grad_accum,
                remat,
                report.total / GiB,
                "" if report.fits else " (does not fit)",
            )
            if report.fits:
                return {"train.grad_accum": grad_accum, "model.remat_policy": remat}, report
    return None


def main(argv: list[str] | None = None) -> int:
    # Only describing chips here, never running on them: several compile-checks (or one
    # beside a test) may load libtpu at once, which its lockfile refuses by default.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    parser = argparse.ArgumentParser(
        prog="alignjax compile-check",
        description="Compile each stage's training step for a TPU topology (or the local devices) "
        "and report per-chip memory; exits 1 when a stage does not fit.",
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument(
        "--topology", help="a TPU slice, e.g. v5p:2x2x1, v5e:4x4, v6e:2x4 (default: local devices)"
    )
    parser.add_argument("--num-slices", type=int, default=1)
    parser.add_argument(
        "--chips",
        type=int,
        help="compile for the first N chips of the topology only, e.g. --topology v5p:2x2x1 --chips 1 "
        "for one chip (the smallest slice a generation describes may be larger)",
    )
    parser.add_argument(
        "--fit",
        action="store_true",
        help="search train.grad_accum and model.remat_policy for the largest per-chip micro-batch "
        "that fits, and print the overrides",
    )
    return run_command("compile-check", _run, parser.parse_intermixed_args(argv))


def _run(args) -> int:
    from alignjax.train.config import load_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", force=True)
    cfg = load_config(args.config, args.overrides)
    topology = args.topology or cfg.mesh.topology
    devices = target_devices(topology, args.num_slices if args.topology else cfg.mesh.num_slices)
    if args.chips is not None:
        if not 1 <= args.chips <= len(devices):
            raise ValueError(f"--chips {args.chips}: the target has {len(devices)} chips")
        devices = devices[: args.chips]
    if args.fit:
        ok = True
        for index, stage in enumerate(stages(cfg)):
            found = fit_stage(stage, devices)
            if found is None:
                print(
                    f"stage {stage.name}: nothing fits, even one micro-batch row per data shard fully rematerialised"
                )
                ok = False
                continue
            overrides, report = found
            print("\n".join(report.lines()))
            prefix = f"stages.{index}." if cfg.stages else ""
            print("  overrides: " + " ".join(f"{prefix}{k}={v}" for k, v in overrides.items()))
        return 0 if ok else 1
    reports = compile_check(cfg, devices)
    for report in reports:
        print("\n".join(report.lines()))
    return 0 if all(r.fits for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
