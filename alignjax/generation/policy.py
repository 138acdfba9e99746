"""A trained model for inference: parameters, config, tokenizer, and where it came from.

`load_policy` takes what users have at hand: a training run directory, its
`checkpoints` directory, one step directory, a converted checkpoint, or a Hugging
Face directory or Hub name. Training checkpoints may hold parts that are not the decoder
(`user_model` for P-DPO, `mask_head` for SparsePO); they are kept apart in
`extras`, because the decoder's functions take exactly the decoder's tree. The
generation config (generation_config.json, carried in checkpoint metadata) names the
ids generation stops at.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from alignjax.core import hub, paths
from alignjax.data.load_tokenizer import tokenizer_pad_id
from alignjax.generation.stop_ids import stop_ids
from alignjax.models import quantize
from alignjax.models.config import ModelConfig
from alignjax.models.lora import Adapted
from alignjax.models.mask_head import MASK_HEAD_KEY  # noqa: F401  (names of `extras`)
from alignjax.models.parts import LORA, split_parts
from alignjax.models.user_model import USER_MODEL_KEY  # noqa: F401


@dataclasses.dataclass
class Policy:
    cfg: ModelConfig
    params: dict[str, Any]  # the decoder's tree only
    extras: dict[str, Any]  # user_model / mask_head, when the checkpoint has them
    tokenizer: Any
    source: str  # the path the user gave
    step: int | None  # checkpoint step; None for a Hugging Face directory
    run_dir: str | None  # the training run this came from, when it is one
    checkpoint_root: str | None  # the checkpoint root holding `step`; None for an HF directory
    generation_config: dict[str, Any] | None  # generation_config.json; None when the model has none

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return stop_ids(self.tokenizer, self.cfg, self.generation_config)

    @property
    def pad_id(self) -> int:
        return tokenizer_pad_id(self.tokenizer)


def _checkpoint_dir(path: str) -> str | None:
    """The checkpoint root or step directory `path` names, or None for an HF directory."""
    if paths.isdir(paths.join(path, "checkpoints")):
        return paths.join(path, "checkpoints")
    if paths.exists(paths.join(path, "config.json")):
        return None
    return path


def _run_dir_of(root: str) -> str | None:
    """A training run's directory: the parent of `checkpoints/`."""
    return paths.dirname(root) if paths.basename(root) == "checkpoints" else None


def _tokenizer(root: str, run_dir: str | None):
    from alignjax.convert import model_checkpoint as mc
    from alignjax.data.load_tokenizer import load_tokenizer

    candidates = [mc.tokenizer_path(root)]
    if run_dir is not None:
        candidates.append(paths.join(run_dir, "tokenizer"))
    for path in candidates:
        if path is not None and paths.isdir(path):
            return load_tokenizer(path)
    raise FileNotFoundError(
        f"{root}: no tokenizer/ directory next to the checkpoint steps; copy the model's "
        "tokenizer files (tokenizer.json, tokenizer_config.json) into it"
    )


def load_policy(path: str, revision: str | None = None, **execution: Any) -> Policy:
    """Load a model for generation (a Hub name at `revision` too); `execution` overrides
    dtype / scan_layers / attention."""
    import jax

    from alignjax.convert import api
    from alignjax.convert import model_checkpoint as mc
    from alignjax.data.load_tokenizer import load_tokenizer

    resolved = hub.resolve(path, revision=revision, key="--model", revision_key="--revision")
    path = resolved.local_dir if resolved is not None else paths.abspath(path.rstrip("/"))
    if not paths.exists(path):
        raise FileNotFoundError(f"{path}: no such run, checkpoint or Hugging Face directory")
    ckpt = _checkpoint_dir(path)
    if ckpt is None:
        cfg, params, meta = api.load_hf_model(path, **execution)
        return Policy(
            cfg, params, {}, load_tokenizer(path), path, None, None, None, meta["generation_config"]
        )
    root, step = mc.resolve(ckpt)
    meta = mc.load_meta(root, step)
    if meta.get("lora"):  # adapters: sampled through the base the checkpoint names
        # The adapters' layer layout is the checkpoint's, so the base loads in it too.
        execution = {**execution, "scan_layers": meta["scan_layers"]}
        cfg = api.lora_config_from_meta(meta, **execution)
        saved = mc.load_params(root, step)
        _, base = api.lora_base(meta, **{"param_dtype": meta["param_dtype"], **execution})
        kind = meta["lora"].get("quantize_base")
        if kind:  # sampled through the base it trained with (QLoRA: quantized the same way)
            base = jax.jit(functools.partial(quantize.quantize_tree, kind=kind))(base)
        params = Adapted(base, saved.pop(LORA))
        extras = saved
    else:
        cfg = api.model_config_from_meta(meta, **execution)
        params, extras = split_parts(mc.load_params(root, step))
    run_dir = _run_dir_of(root)
    params, extras = jax.device_put((params, extras))
    return Policy(
        cfg,
        params,
        extras,
        _tokenizer(root, run_dir),
        path,
        step,
        run_dir,
        root,
        meta["generation_config"],
    )
