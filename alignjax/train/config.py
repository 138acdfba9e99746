"""The training config: one dataclass per YAML section, validated by `configlib`.

`alignjax train CONFIG key=value ...` loads YAML, applies overrides and builds
`TrainConfig`; unknown keys fail with the closest valid one. A recipe with several
stages (MetaAlign: SFT then DPO) lists them under `stages:`, each a mapping of dotted
overrides applied on top of the base config for that stage only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from alignjax.convert.loading import ModelSection
from alignjax.core import configlib, paths
from alignjax.core.sharding import MeshSection
from alignjax.data.config import DataConfig, SourceConfig
from alignjax.losses.dpo_combined import DPOOptions
from alignjax.train import methods
from alignjax.train.optim import OptimSection
from alignjax.train.recipe_checks import check_stage_data

# DataConfig fields that a method sets from its own section (`Method.data_options`), so
# not `data:` keys: what to write instead of each.
METHOD_DATA_KEYS = {
    "n_user_tokens": "loss.pdpo.n_user_tokens",
    "token_weights": "loss.sparsepo.weights: given (the data's token weights then ride in every batch)",
    "cut_positive_score": "loss.cut.positive_score",
    "margin_field": "loss.reward.margin_field",
}
_NOT_DATA_KEYS = ("sources", "batch_size", *METHOD_DATA_KEYS)


def _data_section_fields():
    """`data:` takes DataConfig's keys, with `train`/`eval` in place of `sources`, and
    without those its method sets."""
    import typing

    hints = typing.get_type_hints(DataConfig)
    fields = []
    for f in dataclasses.fields(DataConfig):
        if f.name in _NOT_DATA_KEYS:
            continue
        default = (
            dataclasses.field(default_factory=f.default_factory)
            if f.default_factory is not dataclasses.MISSING
            else dataclasses.field(default=f.default)
        )
        fields.append((f.name, hints[f.name], default))
    return fields


DataSection = dataclasses.make_dataclass(
    "DataSection",
    [
        # A path, a list of paths, or a list of {path, weight, format, split, data_dir}.
        ("train", Any, dataclasses.field(default=None)),
        # Held-out data: the same forms, or a mapping name -> those forms for several sets.
        ("eval", Any, dataclasses.field(default=None)),
        # Generate a built-in task into <run_dir>/data instead of reading files.
        ("builtin", str | None, dataclasses.field(default=None)),
        *_data_section_fields(),
    ],
    frozen=False,
)


def sources_from(value: Any, key: str) -> list[SourceConfig]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(SourceConfig(path=item))
        elif isinstance(item, dict):
            try:
                out.append(SourceConfig(**item))
            except TypeError as e:
                raise configlib.ConfigError(f"{key}[{i}]: {e}") from None
        else:
            raise configlib.ConfigError(f"{key}[{i}]: expected a path or a mapping, got {item!r}")
    return out


def resolve_builtin_paths(path_or_list, data_dir: str | None):
    """`builtin:NAME` paths point into the generated task directory."""

    def one(p):
        if isinstance(p, str) and p.startswith("builtin:"):
            if data_dir is None:
                raise ValueError(f"{p!r} needs data.builtin to be set")
            return paths.join(data_dir, p.split(":", 1)[1] + ".jsonl")
        if isinstance(p, dict) and "path" in p:
            return dict(p, path=one(p["path"]))
        return p

    if isinstance(path_or_list, list):
        return [one(p) for p in path_or_list]
    return one(path_or_list)


def data_config(
    stage_cfg: TrainConfig, sources: list[SourceConfig], batch_size: int, **changes
) -> DataConfig:
    """A stage's DataConfig: its `data:` keys, and what its method's records need."""
    values = {
        f.name: getattr(stage_cfg.data, f.name)
        for f in dataclasses.fields(DataConfig)
        if f.name not in _NOT_DATA_KEYS
    }
    values["templates"] = configlib.to_dict(values["templates"])
    method = methods.method_for(stage_cfg.loss)
    values.update(method.data_options(stage_cfg.loss))
    if values["over_length"] == "auto":
        values["over_length"] = method.over_length
    values.update(changes)
    return DataConfig(sources=sources, batch_size=batch_size, **values)


def _check_moved_keys(tree: dict[str, Any]) -> None:
    """A method's data key given under `data:` names the key to write instead, before the
    generic unknown-key error (and before any model or data is read)."""
    data = tree.get("data")
    for key, new in METHOD_DATA_KEYS.items():
        if isinstance(data, dict) and key in data:
            raise configlib.ConfigError(f"data.{key} moved: write {new}")


@dataclasses.dataclass(frozen=True)
class LossSection(DPOOptions):
    """`type` names the objective: any DPO-family name (or a list summed with `weights`),
    `sft`, `sparsepo` / `tdpo`, `pdpo`, `cut`, `mo_odpo`: whatever a registered method
    accepts. Keys use TRL's names where TRL has them: the DPO family's options are
    `DPOOptions` (`beta`, `label_smoothing`, ...), keys of this section. Each method's own
    keys live in its section (`loss.sparsepo`, `loss.pdpo`, `loss.cut`, `loss.mo_odpo`,
    ...), declared and validated by the method (`alignjax.train.methods`).
    """

    type: Any = "sigmoid"
    weights: list[float] | None = None
    # TR-DPO: every `ref_model_sync_steps` steps of a stage, the reference becomes
    # alpha * policy + (1 - alpha) * reference (checkpointed with the run as it moves).
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    # Where reference log-probs come from: the frozen initial model in the same step,
    # or files written by `alignjax precompute-ref`.
    reference: str = "model"
    # Vocabulary chunking of log-prob computation (memory vs. speed).
    token_chunk: int = 1024
    vocab_chunk: int = 8192
    # The methods' sections given in the config, by name (the YAML keys beside those above).
    sections: dict[str, Any] = dataclasses.field(default_factory=dict)

    @staticmethod
    def __open_sections__() -> dict[str, type]:
        return methods.section_types()

    def __post_init__(self):
        if self.reference not in ("model", "precomputed"):
            raise ValueError(f"loss.reference={self.reference!r}: use model or precomputed")
        method = methods.method_for(self)
        if self.reference == "precomputed" and method.no_precomputed_reference:
            raise ValueError(
                f"loss.reference=precomputed is not supported for loss.type={self.type}: "
                f"{method.no_precomputed_reference}. Precomputed reference log-probs serve the DPO "
                "family (sigmoid, ipo, ...); use loss.reference: model here"
            )
        if not 0.0 <= self.ref_model_mixup_alpha <= 1.0:
            raise ValueError(f"loss.ref_model_mixup_alpha={self.ref_model_mixup_alpha} must be in [0, 1]")
        if self.ref_model_sync_steps < 1:
            raise ValueError(f"loss.ref_model_sync_steps={self.ref_model_sync_steps} must be at least 1")
        if self.sync_ref_model and self.reference == "precomputed":
            raise ValueError(
                "loss.sync_ref_model moves the reference during training, so its log-probs cannot be "
                "precomputed: use loss.reference: model"
            )
        method.check(self)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.type,) if isinstance(self.type, str) else tuple(self.type)

    def section(self, name: str):
        """The method section `loss.<name>`: as configured, else its defaults."""
        if name in self.sections:
            return self.sections[name]
        types = methods.section_types()
        if name not in types:
            raise ValueError(f"loss.{name}: no registered method declares this section")
        return types[name]()


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 1000
    batch_size: int = 8  # global: pairs (or examples / packed rows) per optimizer step
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end of each stage
    eval_batches: int | None = None  # None: the whole eval set
    save_every: int = 500
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    # Two eval sets holding the same pairs under opposite conditions (the second with
    # chosen and rejected swapped): `flip_agreement` is how often the implicit-reward
    # preference between the two answers reverses with the condition (steerability).
    flip_eval: list[str] | None = None
    # With several processes, how often they agree on whether one got SIGTERM (a blocking
    # collective, so not every step); one process checks its flag every step.
    signal_check_every: int = 10


@dataclasses.dataclass(frozen=True)
class LoggingSection:
    tensorboard: bool = True
    wandb: dict[str, Any] | None = None
    progress_bar: bool = True
    # ORG/NAME: when training ends, the last checkpoint is exported and pushed to this Hub
    # repository with a model card (created `push_private` if missing; on branch
    # `push_revision`, default the repository's default branch).
    push_to_hub: str | None = None
    push_private: bool = False
    push_revision: str | None = None


@dataclasses.dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    logging: LoggingSection = dataclasses.field(default_factory=LoggingSection)
    # Each stage: {name: ..., <dotted key>: value, ...} applied over the sections above.
    stages: list[dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    config: TrainConfig
    first_step: int  # global step at which the stage starts
    last_step: int  # global step at which it ends (exclusive)


def load_config(path: str, overrides: list[str] = ()) -> TrainConfig:
    tree = configlib.load_yaml(path)
    for override in overrides:
        configlib.apply_override(tree, override)
    try:
        _check_moved_keys(tree)
        cfg = configlib.from_dict(TrainConfig, tree)
        stages(cfg, tree)  # validate every stage up front, not when it starts
    except (configlib.ConfigError, ValueError) as e:
        raise configlib.ConfigError(f"{path}: {e}") from None
    cfg._tree = tree  # stages are rebuilt from the raw tree, with their overrides
    cfg._argv = (path, *overrides)  # to name the exact `alignjax precompute-ref` command in errors
    return cfg


def _check_reference_sync(stage_cfg: TrainConfig, prefix: str) -> None:
    # A LoRA stage's reference is the base (with the starting adapters): no copy of its own
    # to move, as in TRL, which refuses sync_ref_model for PEFT models.
    if stage_cfg.loss.sync_ref_model and stage_cfg.model.lora is not None:
        raise configlib.ConfigError(
            f"{prefix}loss.sync_ref_model: a LoRA run's reference is its frozen base, which does not "
            "move; unset model.lora or loss.sync_ref_model"
        )


def stages(cfg: TrainConfig, tree: dict[str, Any] | None = None) -> list[Stage]:
    """The run's stages with global step ranges; a config without `stages:` has one."""
    tree = tree if tree is not None else getattr(cfg, "_tree", configlib.to_dict(cfg))
    if not cfg.stages:
        check_stage_data(cfg, cfg, "", "")
        _check_reference_sync(cfg, "")
        return [Stage("train", cfg, 0, cfg.train.steps)]
    out, step = [], 0
    base = {k: v for k, v in tree.items() if k != "stages"}
    for i, stage in enumerate(cfg.stages):
        stage = dict(stage)
        name = str(stage.pop("name", f"stage{i}"))
        stage_tree = configlib.to_dict(base)
        for key, value in stage.items():
            configlib.apply_override(stage_tree, f"{key}={_yaml_scalar(value)}")
        try:
            _check_moved_keys(stage_tree)
            stage_cfg = configlib.from_dict(TrainConfig, stage_tree)
        except configlib.ConfigError as e:
            raise configlib.ConfigError(f"stages[{i}] ({name}): {e}") from None
        check_stage_data(cfg, stage_cfg, f"stages.{i}.", f"stage {i} ({name}) ")
        _check_reference_sync(stage_cfg, f"stages.{i}.")
        out.append(Stage(name, stage_cfg, step, step + stage_cfg.train.steps))
        step += stage_cfg.train.steps
    return out


def _yaml_scalar(value: Any) -> str:
    import json

    return json.dumps(value)  # JSON is YAML, so lists and mappings survive apply_override
