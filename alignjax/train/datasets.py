"""Which data a stage reads, decided in one place: its training stream, its eval sets,
and the sets a precomputed reference table must cover."""

from __future__ import annotations

import dataclasses
from typing import Any

from alignjax.core import paths
from alignjax.data.config import DataConfig
from alignjax.train.config import Stage, TrainConfig, data_config, resolve_builtin_paths, sources_from


def micro_batch_size(stage_cfg: TrainConfig) -> int:
    """Pairs (or examples / packed rows) per micro-batch: the global batch over `grad_accum`."""
    train = stage_cfg.train
    if train.batch_size % train.grad_accum:
        raise ValueError(
            f"train.batch_size={train.batch_size} is not divisible by train.grad_accum={train.grad_accum}"
        )
    return train.batch_size // train.grad_accum


def eval_label(name: str) -> str:
    """The config key (and table label) of eval set `name`."""
    return "data.eval" if name == "eval" else f"data.eval.{name}"


def _eval_paths(stage_cfg: TrainConfig, data_dir: str | None) -> dict[str, Any]:
    value = stage_cfg.data.eval
    if value is None:
        return {}
    if isinstance(value, dict) and not {"path", "hub"} & set(value):  # named sets, not one source
        return {name: resolve_builtin_paths(v, data_dir) for name, v in value.items()}
    return {"eval": resolve_builtin_paths(value, data_dir)}


@dataclasses.dataclass(frozen=True)
class StageData:
    train: DataConfig  # shuffled, repeated until the stage's last step, micro-batches
    evals: dict[str, DataConfig]  # name -> one unshuffled pass in global batches
    # (label, DataConfig): the train set and each eval set read once in file order, every
    # source weight 1, so each record is read exactly once whatever the training mixture.
    tables: list[tuple[str, DataConfig]]


def stage_data(stage: Stage, stage_index: int, data_dir: str | None, run_dir: str) -> StageData:
    scfg = stage.config
    if scfg.data.train is None:
        raise ValueError(
            f"stage {stage.name}: data.train is not set (a path, a list of paths, or builtin:NAME)"
        )
    micro = micro_batch_size(scfg)
    train_sources = sources_from(resolve_builtin_paths(scfg.data.train, data_dir), "data.train")
    train = data_config(scfg, train_sources, micro, seed=scfg.data.seed + stage_index, num_epochs=None)
    if train.n_user_tokens > 0 and train.user_vocab_path is None:
        # Saved with the run, so eval and generation map user ids exactly as training did.
        train = dataclasses.replace(train, user_vocab_path=paths.join(run_dir, "user_vocab.json"))
    eval_sources = {
        name: sources_from(paths, eval_label(name)) for name, paths in _eval_paths(scfg, data_dir).items()
    }
    evals = {
        name: data_config(scfg, sources, scfg.train.batch_size, shuffle=False, num_epochs=1, worker_count=0)
        for name, sources in eval_sources.items()
    }
    once = [("data.train", train_sources)] + [(eval_label(n), s) for n, s in eval_sources.items()]
    tables = [
        (
            label,
            data_config(
                scfg,
                [dataclasses.replace(s, weight=1.0) for s in sources],
                micro,
                shuffle=False,
                num_epochs=1,
            ),
        )
        for label, sources in once
    ]
    return StageData(train, evals, tables)


def model_for_rows(model_cfg, dcfg: DataConfig):
    """The model config for this data's rows: kernels that describe segments by static slots
    (cuDNN) are sized by how many sequences a packed row may hold."""
    return dataclasses.replace(
        model_cfg, max_segments_per_row=dcfg.max_sequences_per_row if dcfg.packing else 1
    )
