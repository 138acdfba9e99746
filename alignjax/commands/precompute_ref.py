"""`alignjax precompute-ref CONFIG [key=value ...]`: reference log-probs computed once.

With `loss.reference: precomputed`, a DPO-family stage holds no reference model: its
reference log-probs (summed over each response) are computed once, here, for every
record of `data.train` and of each eval set, and the trainer looks them up per pair by
record key (`PairBatch.record_key_P`). That saves the reference's parameters in device
memory and its forward pass in every step. Tables are named by fingerprints of the model
and the data (`fingerprints.py`, `reference_table.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import jax
import numpy as np

from alignjax.core import paths
from alignjax.core.errors import run_command
from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.models.parts import LORA, split_parts
from alignjax.train.bootstrap import bootstrap
from alignjax.train.config import LossSection, Stage, TrainConfig, stages
from alignjax.train.datasets import model_for_rows, stage_data
from alignjax.train.fingerprints import data_identity, fingerprint, model_identity
from alignjax.train.methods.common import pair_logps
from alignjax.train.multihost import anywhere, gather_host_values, global_batch, primary_decides, to_host
from alignjax.train.reference import uses_table
from alignjax.train.reference_table import table_path, write_table

log = logging.getLogger("alignjax.precompute")


def compute_table(params, model_cfg, loss: LossSection, dcfg: DataConfig, tokenizer, mesh, pad_id: int):
    """(record_key_N sorted, chosen_N, rejected_N): the reference's summed log-probs of every pair."""
    model_cfg = model_for_rows(model_cfg, dcfg)

    def sums(p, batch):
        logps = pair_logps(p, model_cfg, loss, batch)
        return logps.chosen_logps_B, logps.rejected_logps_B

    sums_fn = jax.jit(sums)
    keys, chosen, rejected = [], [], []
    last = None
    with make_pipeline(dcfg, tokenizer) as pipeline:
        while True:
            local = next(pipeline, None)
            # Processes step together (each step is one computation over all of them); one whose
            # shard ran out first feeds a copy of its last batch with every pair marked padding.
            if not anywhere(local is not None):
                break
            if local is None:
                if last is None:
                    raise ValueError(
                        f"process {jax.process_index()} read no records of this data set; "
                        "use fewer processes or more data"
                    )
                local = dataclasses.replace(
                    last,
                    pair_valid_P=np.zeros_like(last.pair_valid_P),
                    record_key_P=np.zeros_like(last.record_key_P),
                )
            last = local
            batch = global_batch(local, mesh, pad_id)
            # The mesh in context, as in the training step: activations take their layouts from
            # the rules table and rows split over `sequence` attend across the shards.
            with jax.set_mesh(mesh):
                chosen_P, rejected_P = sums_fn(params, batch)
            valid_P = gather_host_values(local.pair_valid_P) > 0
            keys.append(gather_host_values(local.record_key_P)[valid_P])
            chosen.append(to_host(chosen_P)[valid_P])
            rejected.append(to_host(rejected_P)[valid_P])
    keys_N = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    order = np.argsort(keys_N, kind="stable")
    keys_N = keys_N[order]
    if len(keys_N) > 1 and np.any(keys_N[1:] == keys_N[:-1]):
        raise AssertionError("a record was read twice in one pass over the data")
    cat = lambda parts: (np.concatenate(parts) if parts else np.zeros(0, np.float32))[order].astype(
        np.float32
    )
    return keys_N, cat(chosen), cat(rejected)


def _lora_starting_reference(cfg: TrainConfig, stage: Stage, index: int, run):
    """A LoRA stage's reference as training builds it (`reference.lora_reference`): the
    frozen base, with the adapters the stage starts from unless they are fresh."""
    from alignjax.models.lora import Adapted
    from alignjax.train.resume import initial_adapters
    from alignjax.train.stage import adapter_layout

    if index == 0:
        if run.fresh_adapters:
            return run.frozen_base
        return Adapted(run.frozen_base, initial_adapters(run))
    _, shardings = adapter_layout(run.model_cfg, run.mesh)
    return Adapted(
        run.frozen_base, jax.device_put(_starting_params(cfg, stage, index, None, LORA), shardings)
    )


def _starting_params(cfg: TrainConfig, stage: Stage, index: int, initial_params, key: str | None = None):
    """The parameters a stage starts from: the model section's for the first stage, else the
    checkpoint the stages before it ended with."""
    if index == 0:
        return initial_params
    from alignjax.convert import model_checkpoint as mc

    root = paths.abspath(paths.join(cfg.run_dir, "checkpoints"))
    step = stage.first_step
    if not paths.isdir(paths.join(root, str(step), "params")):
        raise ValueError(
            f"stage {stage.name!r} starts from the model the stages before it train (checkpoint step {step}), "
            f"but {root}/{step} does not exist yet: run `alignjax train` first; it stops when stage "
            f"{stage.name!r} starts and asks for this table, and resumes there once it is written"
        )
    restored = mc.load_params(root, step, as_numpy=True)
    return restored[key] if key is not None else split_parts(restored)[0]


def precompute(cfg: TrainConfig) -> list[str]:
    """Write the missing tables of every stage that uses them; returns the table paths."""
    todo = [(i, s) for i, s in enumerate(stages(cfg)) if uses_table(s.config.loss)]
    if not todo:
        raise ValueError(
            "no stage has loss.reference: precomputed with a loss that needs a reference "
            "(the DPO family, e.g. loss.type: sigmoid); there is nothing to precompute"
        )
    # As the trainer starts: the same seed gives a preset the same initial parameters.
    run = bootstrap(cfg)
    written = []
    for index, stage in todo:
        scfg = stage.config
        if run.model_cfg.lora_rank:
            params = _lora_starting_reference(cfg, stage, index, run)
        else:
            params = jax.device_put(
                _starting_params(cfg, stage, index, run.loaded.params), run.param_shardings
            )
        model_id = model_identity(run.model_meta["hf_config"], run.model_cfg, params, run.mesh)
        for label, dcfg in stage_data(stage, index, run.data_dir, cfg.run_dir).tables:
            data_id = data_identity(dcfg, run.tokenizer)
            fp = fingerprint(model_id, data_id)
            path = table_path(cfg.run_dir, fp)
            what = f"stage {stage.name!r} {label}"
            if primary_decides(paths.exists(path)):  # computing it is collective
                log.info("%s: %s is up to date", what, path)
                written.append(path)
                continue
            log.info("%s: computing reference log-probs -> %s", what, path)
            keys_N, chosen_N, rejected_N = compute_table(
                params, run.model_cfg, scfg.loss, dcfg, run.tokenizer, run.mesh, run.pad_id
            )
            if jax.process_index() == 0:
                description = {"fingerprint": fp, "what": what, "records": len(keys_N)}
                write_table(
                    path, keys_N, chosen_N, rejected_N, {**description, "model": model_id, "data": data_id}
                )
            log.info("%s: %d pairs", what, len(keys_N))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="alignjax precompute-ref",
        description="Compute the reference log-probs of the stages with loss.reference: precomputed, once.",
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="the same overrides as for train")
    return run_command("precompute-ref", _precompute_ref, parser.parse_args(argv))


def _precompute_ref(args) -> int:
    from alignjax.train.config import load_config

    # force: importing Orbax lets absl configure logging first, which would hide INFO lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    for path in precompute(load_config(args.config, args.overrides)):
        print(f"reference log-probs: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
