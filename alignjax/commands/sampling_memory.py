"""compile-check's sampling programs: an online stage's prefill and decode, compiled for the
slice exactly as the trainer runs them (`alignjax.generation.sampler.sampling_program`).

A draw samples `num_samples` rows for each prompt of a micro-batch (rounded up so the
batch axes divide them, as the processes agree on), prompts fill the bucket of
`data.max_prompt_length`, and the policy's parameters lie as training holds them. The
KV cache is the state both programs hold: prefill writes it, decode updates it in place.
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
from alignjax.core.sharding import BATCH_AXES
from alignjax.generation import process_rows, sampler
from alignjax.models import attention
from alignjax.train.config import Stage
from alignjax.train.datasets import micro_batch_size

KEY_IMPL = "threefry2x32"


@dataclasses.dataclass
class ProgramReport:
    name: str
    params: int
    kv_cache: int
    temporaries: int
    total: int
    hbm: int | None
    compiler_error: str | None = None  # the compiler's refusal (no memory analysis then)

    @property
    def fits(self) -> bool:
        return self.compiler_error is None and (self.hbm is None or self.total <= self.hbm)

    def lines(self) -> list[str]:
        name = f"  {self.name:<12}"
        parts = (
            f"parameters {gib(self.params).strip()}, KV cache {gib(self.kv_cache).strip()}, "
            f"temporaries {gib(self.temporaries).strip()}"
        )
        if self.compiler_error is not None:
            return [
                f"{name}  {parts}",
                f"{name}  total {gib(self.total)}   (at least): DOES NOT FIT: {self.compiler_error}",
            ]
        return [
            f"{name}  {parts}",
            f"{name}  total {gib(self.total)}   {budget(self.total, self.hbm, self.fits)}",
        ]


@dataclasses.dataclass
class SamplingReport:
    prompts: int
    num_samples: int
    rows: int
    rows_per_chip: float
    prompt_len: int
    new_tokens: int
    programs: list[ProgramReport]

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.programs)

    def lines(self) -> list[str]:
        head = (
            f"  sampling: {self.rows} rows ({self.prompts} prompts x {self.num_samples} samples), "
            f"{self.rows_per_chip:g} per chip, prompts of {self.prompt_len} + {self.new_tokens} new tokens"
        )
        return [head, *(line for p in self.programs for line in p.lines())]


def _measure(name: str, lowered, params: int, kv_cache: int, hbm: int | None) -> ProgramReport:
    compiled, refusal = compile_or_refusal(lowered)
    if compiled is None:
        temporaries = refused_temporaries(refusal)
        return ProgramReport(
            name, params, kv_cache, temporaries, params + kv_cache + temporaries, hbm, refusal
        )
    temporaries = compiled.memory_analysis().temp_size_in_bytes
    return ProgramReport(name, params, kv_cache, temporaries, total_bytes(compiled), hbm)


def check_sampling(stage: Stage, method, model_cfg, mesh, policy, hbm: int | None) -> SamplingReport | None:
    """Compile the stage's prefill and decode for `mesh`; None when its method does not sample.
    `policy`: ShapeDtypeStructs of the sampled parameters, carrying their shardings."""
    if method.rollout is None:
        return None
    scfg = stage.config
    plan = method.rollout(scfg.loss)
    prompts = micro_batch_size(scfg)
    processes = len({d.process_index for d in mesh.devices.flat})
    shards = process_rows.batch_shards_per_process(mesh, processes) * processes
    rows = -(-prompts * plan.num_samples // shards) * shards
    prompt_len = sampler.bucket_length(scfg.data.max_prompt_length)
    layout = sampler.params_layout(policy, mesh)
    program = sampler.sampling_program(model_cfg, plan.sampling, mesh, layout, rows, prompt_len, KEY_IMPL)
    abstract = lambda shape, dtype, sh: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)  # noqa: E731
    keys = abstract((processes, 2), np.uint32, program.keys)
    state = jax.tree.map(lambda s, sh: abstract(s.shape, s.dtype, sh), program.state_shapes, program.state)
    with attention.target_platform(mesh.devices.flat[0].platform), jax.set_mesh(mesh):
        prefill = program.prefill.lower(
            policy,
            abstract((rows, prompt_len), np.int32, program.prompt_tokens),
            abstract((rows,), np.int32, program.prompt_lengths),
            keys,
        )
        decode = program.decode.lower(policy, state, keys)
    params = bytes_per_chip(policy, jax.tree.map(lambda x: x.sharding, policy))
    kv_cache = bytes_per_chip(program.state_shapes.cache, program.state.cache)
    return SamplingReport(
        prompts=prompts,
        num_samples=plan.num_samples,
        rows=rows,
        rows_per_chip=rows / np.prod([mesh.shape[a] for a in BATCH_AXES]),
        prompt_len=prompt_len,
        new_tokens=plan.sampling.max_new_tokens,
        programs=[
            _measure("prefill", prefill, params, kv_cache, hbm),
            _measure("decode", decode, params, kv_cache, hbm),
        ],
    )
