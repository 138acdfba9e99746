"""What every command that runs a config starts with: the built-in data, the model, its
tokenizer, the mesh and the parameters' shardings (`train`, `precompute-ref`, and the
online commands that load a run's config)."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax

from alignjax.core import paths, sharding
from alignjax.core.hub_push import check_can_push
from alignjax.convert.loading import LoadedModel, load_model
from alignjax.data.load_tokenizer import load_tokenizer, tokenizer_pad_id
from alignjax.models import decoder, quantize
from alignjax.models.config import ModelConfig
from alignjax.train import hub_revisions
from alignjax.train.config import TrainConfig


def prepare_builtin_data(cfg: TrainConfig) -> str | None:
    """Generate `data.builtin` into <run_dir>/data; its directory, or None."""
    if not cfg.data.builtin:
        return None
    from alignjax.tasks import BUILTIN_TASKS

    if cfg.data.builtin not in BUILTIN_TASKS:
        raise ValueError(f"data.builtin={cfg.data.builtin!r} is not one of {sorted(BUILTIN_TASKS)}")
    out = paths.join(cfg.run_dir, "data")
    if paths.is_remote(out):
        # A bucket: each object appears whole when its upload completes, so the files are
        # generated locally and uploaded under their final names.
        with paths.local_dir_for(out) as scratch:
            BUILTIN_TASKS[cfg.data.builtin](scratch, seed=cfg.seed)
        return out
    # Deterministic: every process writes the same files (hosts need not share a disk). They
    # are written aside and renamed into place, so a process sharing the disk never reads a
    # file another one is halfway through rewriting.
    scratch = f"{out}.tmp-{jax.process_index()}-{os.getpid()}"
    BUILTIN_TASKS[cfg.data.builtin](scratch, seed=cfg.seed)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(scratch):
        os.replace(os.path.join(scratch, name), os.path.join(out, name))
    os.rmdir(scratch)
    return out


def tokenizer_for(loaded: LoadedModel, run_dir: str):
    """(tokenizer, its directory): the model's own, or the built-in byte tokenizer for presets."""
    if loaded.tokenizer_dir is not None:
        return load_tokenizer(loaded.tokenizer_dir), loaded.tokenizer_dir
    from alignjax.data.byte_tokenizer import make_byte_tokenizer

    path = paths.join(run_dir, "tokenizer")
    tokenizer = make_byte_tokenizer()
    if jax.process_index() == 0:
        with paths.local_dir_for(path) as local:
            tokenizer.save_pretrained(local)
    return tokenizer, path


@dataclasses.dataclass
class RunSetup:
    """A config's model, tokenizer, mesh and data, before any stage starts."""

    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    loaded: LoadedModel
    tokenizer: Any
    tokenizer_dir: str | None
    param_shardings: Any  # the decoder's parameters on the mesh, by their logical axes
    data_dir: str | None
    pad_id: int
    # LoRA runs: the frozen base on the mesh in the reference dtype (no second copy is made).
    frozen_base: Any = None
    # LoRA runs: whether the first stage starts from fresh adapters (not model.lora.from_peft).
    fresh_adapters: bool = True
    # `cfg.model` with its Hub names at the commits the run recorded (`hub_revisions`).
    model_section: Any = None

    @property
    def model_cfg(self) -> ModelConfig:
        return self.loaded.cfg

    @property
    def model_meta(self) -> dict[str, Any]:
        return self.loaded.meta


def bootstrap(cfg: TrainConfig) -> RunSetup:
    """Distributed init, run directory, mesh, built-in data, model (same seed, same initial
    parameters in every command) and tokenizer."""
    from alignjax.data.byte_tokenizer import VOCAB_SIZE
    from alignjax.train.shared_dir import check_shared_run_dir

    sharding.maybe_initialize_distributed()
    if cfg.logging.push_to_hub:  # a run that pushes when it ends learns of a missing token now
        check_can_push(cfg.logging.push_to_hub, "logging.push_to_hub")
    paths.makedirs(cfg.run_dir)
    check_shared_run_dir(cfg.run_dir)  # before anything is written there
    mesh = sharding.make_mesh(cfg.mesh)
    data_dir = prepare_builtin_data(cfg)
    hub_revisions.open_hub_datasets(cfg)
    section = hub_revisions.pinned_model(cfg.run_dir, cfg.model)
    loaded = load_model(section, jax.random.key(cfg.seed), vocab_size=VOCAB_SIZE if section.preset else None)
    hub_revisions.record(cfg.run_dir, section, loaded)
    tokenizer, tokenizer_dir = tokenizer_for(loaded, cfg.run_dir)
    shapes = jax.eval_shape(lambda p: p, loaded.params)
    param_shardings = sharding.tree_shardings(decoder.logical_axes(loaded.cfg), shapes, mesh)
    frozen_base = None
    if cfg.model.lora is not None:
        loaded.meta = {**loaded.meta, "lora": lora_meta(section, cfg.seed, loaded)}
        frozen_base = frozen_lora_base(section, loaded, param_shardings, mesh)
    return RunSetup(
        cfg,
        mesh,
        loaded,
        tokenizer,
        tokenizer_dir,
        param_shardings,
        data_dir,
        tokenizer_pad_id(tokenizer),
        frozen_base,
        cfg.model.lora is None or cfg.model.lora.from_peft is None,
        section,
    )


def frozen_lora_base(section, loaded: LoadedModel, param_shardings, mesh):
    """The base of a LoRA run on the mesh, in the reference dtype, quantized when
    `model.lora.quantize_base` says (QLoRA). Sharded before it is converted, so no device
    ever holds the whole full-precision model."""
    kind = section.lora.quantize_base
    dtype = jax.numpy.dtype(section.effective_reference_dtype)
    convert = functools.partial(quantize.frozen, kind=kind, dtype=dtype)
    shapes = jax.eval_shape(convert, loaded.params)
    axes = quantize.frozen_axes(decoder.logical_axes(loaded.cfg), kind)
    shardings = sharding.tree_shardings(axes, shapes, mesh)
    return jax.jit(convert, out_shardings=shardings, donate_argnums=0)(
        jax.device_put(loaded.params, param_shardings)
    )


def lora_meta(section, seed: int, loaded: LoadedModel) -> dict[str, Any]:
    """What a LoRA checkpoint records instead of the base weights: the adapter settings in
    PEFT's terms and the base model it adapts (its name, the Hub commit when it is a Hub
    name, and a fingerprint of its files; or for a randomly initialised preset what rebuilds
    it: name, overrides and seed)."""
    from alignjax.core.fileio import files_identity

    lora = section.lora
    preset = None
    if section.preset is not None:
        preset = {"name": section.preset, "overrides": dict(section.preset_overrides), "seed": seed}
    # A Hub model by its repository id, which PEFT's adapter_config.json names too.
    base = loaded.hub.repo_id if loaded.hub is not None else section.hf_path
    return {
        "base_preset": preset,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "use_rslora": lora.use_rslora,
        "lora_dropout": lora.dropout,
        "quantize_base": lora.quantize_base,
        "target_modules": list(lora.targets),
        "base_model_name_or_path": base or f"preset:{section.preset}",
        "base_revision": loaded.hub.commit if loaded.hub is not None else None,
        "base_fingerprint": files_identity(loaded.tokenizer_dir) if section.hf_path else None,
    }
