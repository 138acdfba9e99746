"""`alignjax compile-check CONFIG [key=value ...] [--topology v5p:2x2x1] [--fit]`.

Lowers and compiles the exact programs each stage would run against a TPU topology's
devices from any host (`jax.experimental.topologies`, with `jax[tpu]` installed), or
against the local devices, and reports per-chip memory from the compiled programs:
nothing is allocated and no weights are read. Every stage compiles its training step
(`step_memory.py`); a stage that samples from the policy (MO-ODPO, online CUT) also its
prefill and decode (`sampling_memory.py`). A stage fits when every program fits.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from typing import Any

import jax

from alignjax.commands.step_memory import StageReport, check_stage
from alignjax.core import hub, sharding
from alignjax.core.errors import run_command
from alignjax.core.hardware import GiB
from alignjax.models.config import ModelConfig
from alignjax.models.families import load_hf_config_dict, model_config_from_hf
from alignjax.models.presets import preset_config
from alignjax.train.config import Stage, TrainConfig, stages

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
                    f"stage {stage.name}: nothing fits, even one micro-batch row per data shard "
                    "fully rematerialised"
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
