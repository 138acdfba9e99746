"""compile-check's measure of one stage: its training step (and, for a method that samples
from the policy, its sampling programs) compiled for a set of devices.

The step compiled is the exact one the stage would run (the method's loss, gradients, the
optimizer update, the reference forward, the config's mesh and shardings), one
micro-batch with the update fused, which holds every buffer a step ever holds at once
(parameters, optimizer state, reference, gradients, activations).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from alignjax.commands.compiled_memory import (
    budget,
    bytes_per_chip,
    compile_or_refusal,
    gib,
    refused_temporaries,
    total_bytes,
)
from alignjax.commands.sampling_memory import SamplingReport, check_sampling
from alignjax.core import sharding
from alignjax.core.hardware import chip
from alignjax.data.shapes import largest_batch
from alignjax.models import attention, decoder, quantize
from alignjax.models.config import ModelConfig
from alignjax.models.flops import step_flops
from alignjax.models.parts import policy_decoder
from alignjax.train.config import Stage, data_config
from alignjax.train.datasets import micro_batch_size
from alignjax.train.reference import abstract_arrays, runs_reference_forward
from alignjax.train.stage import plan_stage
from alignjax.train.step import fused_step


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
    # A method that samples from the policy: its prefill and decode programs.
    sampling: SamplingReport | None = None

    @property
    def step_fits(self) -> bool:
        return self.compiler_error is None and (self.hbm is None or self.total <= self.hbm)

    @property
    def fits(self) -> bool:
        """Every program the stage runs fits."""
        return self.step_fits and (self.sampling is None or self.sampling.fits)

    def lines(self) -> list[str]:
        head = (
            f"stage {self.stage}: {self.devices} x {self.chip}, {self.rows_per_chip:g} rows "
            f"({self.tokens_per_chip:,.0f} tokens) per chip per micro-batch"
        )
        sampling = self.sampling.lines() if self.sampling is not None else []
        if self.compiler_error is not None:
            return [
                head,
                f"  DOES NOT FIT: {self.compiler_error}",
                f"  total         {gib(self.total)}   (at least)",
                *sampling,
            ]
        flops = f"{self.model_flops:.3e} model FLOPs per step"
        if self.compiler_flops:
            once = ", scanned layers once" if self.scanned else ""
            flops += f" (the compiler's count{once}: {self.compiler_flops * self.devices:.3e})"
        return [
            head,
            f"  parameters    {gib(self.params)}",
            f"  optimizer     {gib(self.opt_state)}",
            f"  {'frozen base' if self.lora else 'reference  '}   {gib(self.reference)}",
            f"  batch         {gib(self.batch)}",
            f"  temporaries   {gib(self.temporaries)}   (gradients, activations, attention; compiler)",
            f"  total         {gib(self.total)}   {budget(self.total, self.hbm, self.step_fits)}",
            f"  {flops}",
            *sampling,
        ]


def _host_batch(dcfg, scfg, method):
    """The largest micro-batch the stage's data can make, as the host builds it."""
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
    return host_batch


def _reference(stage: Stage, plan, model_cfg: ModelConfig, decoder_shapes, decoder_shardings, mesh):
    """(ShapeDtypeStructs of the reference the step holds or None, its shapes, its shardings)."""
    scfg = stage.config
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
    return ref, ref_shapes, ref_shardings


def _lower_step(plan, mesh, platform: str, params, ref, batch):
    replicated = sharding.replicated(mesh)
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)  # noqa: E731
    loss_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=replicated),
        plan.objective.init_state(),
    )
    counters = {"step": scalar(np.int32), "skipped": scalar(np.int32)}
    rng = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated)
    opt_state = abstract_arrays(plan.opt_shapes, plan.opt_shardings)
    jitted = jax.jit(
        fused_step(plan.objective, plan.tx),
        donate_argnums=(0, 1),
        out_shardings=((plan.param_shardings, plan.opt_shardings, None, None), None),
    )
    with attention.target_platform(platform), jax.set_mesh(mesh):
        return jitted.lower(params, opt_state, ref, batch, loss_state, rng, counters, scalar(np.int32))


def check_stage(stage: Stage, devices: list, model_cfg: ModelConfig) -> StageReport:
    """Compile one stage's step (and sampling programs) for `devices` and measure them."""
    scfg = stage.config
    mesh = sharding.make_mesh(scfg.mesh, devices)
    decoder_shapes = jax.eval_shape(lambda: decoder.init_params(model_cfg, jax.random.key(0)))
    decoder_shardings = sharding.tree_shardings(decoder.logical_axes(model_cfg), decoder_shapes, mesh)
    dcfg = data_config(scfg, [], micro_batch_size(scfg))
    sizes = {"num_conditions": 0, "num_users": 1, "n_user_tokens": dcfg.n_user_tokens}
    plan = plan_stage(model_cfg, decoder_shapes, decoder_shardings, mesh, stage, sizes)
    host_batch = _host_batch(dcfg, scfg, plan.method)
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh, x.ndim)),
        host_batch,
    )
    ref, ref_shapes, ref_shardings = _reference(
        stage, plan, model_cfg, decoder_shapes, decoder_shardings, mesh
    )
    params = abstract_arrays(plan.param_shapes, plan.param_shardings)
    platform = devices[0].platform
    compiled, refusal = compile_or_refusal(_lower_step(plan, mesh, platform, params, ref, batch))
    entry = chip(devices[0].device_kind)
    hbm = entry.hbm_bytes if entry and platform != "cpu" else None
    n = len(devices)
    reference = runs_reference_forward(plan.objective, scfg.loss)
    flops = step_flops(model_cfg, *host_batch.tokens_BxL.shape, with_reference=reference)
    sized = dict(
        stage=stage.name,
        chip=entry.name if entry else devices[0].device_kind,
        devices=n,
        rows_per_chip=host_batch.tokens_BxL.shape[0] / n,
        tokens_per_chip=flops.tokens / n,
        params=bytes_per_chip(plan.param_shapes, plan.param_shardings),
        opt_state=bytes_per_chip(plan.opt_shapes, plan.opt_shardings),
        reference=bytes_per_chip(ref_shapes, ref_shardings) if ref is not None else 0,
        batch=bytes_per_chip(batch, jax.tree.map(lambda x: x.sharding, batch)),
        hbm=hbm,
        model_flops=flops.total,
        scanned=model_cfg.scan_layers,
        lora=bool(model_cfg.lora_rank),
        sampling=check_sampling(stage, plan.method, model_cfg, mesh, policy_decoder(params, ref), hbm),
    )
    if compiled is None:
        temporaries = refused_temporaries(refusal)
        persistent = sized["params"] + sized["opt_state"] + sized["reference"] + sized["batch"]
        return StageReport(
            **sized,
            temporaries=temporaries,
            total=persistent + temporaries,
            compiler_flops=None,
            compiler_error=refusal,
        )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return StageReport(
        **sized,
        temporaries=compiled.memory_analysis().temp_size_in_bytes,
        total=total_bytes(compiled),
        compiler_flops=(cost or {}).get("flops"),
    )
