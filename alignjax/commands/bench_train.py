"""`alignjax bench train CONFIG`: training-step throughput of a config, its model FLOPs by
term and its MFU.

The config trains for two logging windows of `--steps` steps: the first includes
compilation, the second is timed. Its model FLOPs (`alignjax.models.flops`) are printed
per token and per step by term (policy, reference forward, attention) for the config's
full-length micro-batch; MFU divides the FLOPs of the batches the timed steps trained on
(each at its padded length, as the training loop counts them) by step time and by the
peak of every chip: `--peak-tflops`, else the device table (`alignjax.core.hardware`).
"""

from __future__ import annotations

import json
import tempfile
import time

import jax

from alignjax.core.hardware import peak_flops
from alignjax.core.sharding import maybe_initialize_distributed
from alignjax.models.flops import FORMULA, step_flops

_TERMS = ("policy", "reference", "attention")


def flops_terms(cfg) -> dict:
    """Model FLOPs of a one-stage config's step by term (FORMULA's), at its full-length
    micro-batch."""
    from alignjax.commands.compile_check import model_config
    from alignjax.data.shapes import largest_batch
    from alignjax.train.config import data_config
    from alignjax.train.datasets import micro_batch_size, model_for_rows
    from alignjax.train.methods import method_for
    from alignjax.train.reference import runs_reference_forward

    model_cfg = model_config(cfg)
    dcfg = data_config(cfg, [], micro_batch_size(cfg))
    method = method_for(cfg.loss)
    sizes = {"num_conditions": 0, "num_users": 1, "n_user_tokens": dcfg.n_user_tokens}
    objective = method.build(model_for_rows(model_cfg, dcfg), cfg.loss, sizes)
    rows, length = largest_batch(dcfg, dcfg.batch_size, method.batch_record_type).tokens_BxL.shape
    reference = runs_reference_forward(objective, cfg.loss)
    flops = step_flops(model_cfg, rows, length, with_reference=reference)  # rows of the global batch
    micro = cfg.train.grad_accum
    per_token = dict(
        zip(_TERMS, (flops.policy_per_token, flops.reference_per_token, flops.attention_per_token))
    )
    return {
        "matmul_params": flops.matmul_params,
        "adapter_params": flops.adapter_params,
        "reference_forward": reference,
        "rows": flops.rows,
        "length": flops.length,
        "micro_batches": micro,
        "per_token": {**per_token, "total": flops.per_token},
        "per_step": {k: v * flops.tokens * micro for k, v in {**per_token, "total": flops.per_token}.items()},
    }


def mfu(flops_per_step: float, step_time_s: float, peak_per_chip: float, chips: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the chips' summed peak."""
    return flops_per_step / step_time_s / (peak_per_chip * chips)


def train_report(
    config: str, steps: int, records: list[dict], wall_s: float, terms: dict, peak_tflops
) -> dict:
    """The benchmark's result from the timed window's metrics record (the last one)."""
    last = records[-1]
    device = jax.devices()[0].device_kind
    peak, source = peak_flops(device, peak_tflops)
    flops_per_step = last.get("model_flops_per_step")
    step_time = last.get("step_time_s")
    known = peak is not None and flops_per_step is not None and step_time
    return {
        "config": config,
        "steps": steps,
        "wall_s_including_compile": wall_s,
        "tokens_per_sec": last.get("tokens_per_sec"),
        "step_time_s": step_time,
        "mfu": mfu(flops_per_step, step_time, peak, jax.device_count()) if known else None,
        "model_flops_per_step": flops_per_step,
        "flops_formula": FORMULA,
        "device": device,
        "devices": jax.device_count(),
        "peak_tflops_per_chip": peak / 1e12 if peak is not None else None,
        "peak_source": source,
        "model_flops": terms,
        "loss": last.get("loss"),
    }


def run_train_benchmark(config: str, overrides: list[str], steps: int, peak_tflops: float | None) -> dict:
    """Time `steps` steps of a config after as many warm-up steps (compilation excluded)."""
    from alignjax.train.config import load_config
    from alignjax.train.loop import run

    maybe_initialize_distributed()  # before anything starts JAX's backend, as `alignjax train` does
    peak_flops(jax.devices()[0].device_kind, peak_tflops)  # a bad --peak-tflops fails before training
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            *overrides,
            f"run_dir={run_dir}",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "train.save_every=1000000",
            "data.eval=null",
            # Two windows of `steps` steps: the first includes compilation, the second is timed.
            f"train.log_every={steps}",
            f"train.steps={2 * steps}",
            "stages=null",
        ]
        cfg = load_config(config, overrides)
        terms = flops_terms(cfg)
        start = time.perf_counter()
        run(cfg)
        total = time.perf_counter() - start
        with open(f"{run_dir}/metrics.jsonl") as f:
            records = [json.loads(line) for line in f]
    return train_report(config, steps, records, total, terms, peak_tflops)
