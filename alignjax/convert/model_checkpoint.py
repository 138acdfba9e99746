"""The self-describing model checkpoint: an Orbax step directory plus the tokenizer.

Layout (the same one training runs write under `<run_dir>/checkpoints`):

    CKPT_DIR/
      tokenizer/          tokenizer files, saved once for the whole run
      <step>/params       Orbax PyTree of parameters
      <step>/model        JSON: the Hugging Face config.json, original tensor dtypes,
                          parameter layout (scanned or not), generation config

A step directory therefore needs nothing else to be exported back to Hugging Face.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from alignjax.core import paths

TOKENIZER_DIR = "tokenizer"
PARAMS_ITEM = "params"
MODEL_ITEM = "model"


def _manager(root: str, **options: Any) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        paths.abspath(root),
        options=ocp.CheckpointManagerOptions(create=True, **options),
    )


def save_model(
    root: str,
    params: Any,
    meta: dict[str, Any],
    *,
    step: int = 0,
    tokenizer_dir: str | None = None,
) -> str:
    """Write params + model metadata as step `step` of the checkpoint directory `root`."""
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, root)
    with _manager(root, enable_async_checkpointing=False) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                **{PARAMS_ITEM: ocp.args.StandardSave(params), MODEL_ITEM: ocp.args.JsonSave(meta)}
            ),
        )
        manager.wait_until_finished()
    return paths.join(root, str(step))


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def copy_tokenizer(src_dir: str, root: str) -> None:
    dest = paths.join(root, TOKENIZER_DIR)
    paths.makedirs(dest)
    for name in TOKENIZER_FILES:
        path = paths.join(src_dir, name)
        if paths.exists(path):
            paths.copy(path, paths.join(dest, name))


def resolve(path: str) -> tuple[str, int]:
    """(checkpoint root, step) for either a root (latest step) or one step's directory."""
    path = paths.abspath(path.rstrip("/"))
    if not paths.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    base = paths.basename(path)
    if base.isdigit() and paths.isdir(paths.join(path, MODEL_ITEM)):
        return paths.dirname(path), int(base)
    steps = sorted(int(d) for d in paths.listdir(path) if d.isdigit() and paths.isdir(paths.join(path, d)))
    if not steps:
        raise FileNotFoundError(
            f"{path}: no checkpoint steps found; pass a run's checkpoints directory or one step's directory"
        )
    return path, steps[-1]


def load_meta(root: str, step: int) -> dict[str, Any]:
    with _manager(root, read_only=True) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(**{MODEL_ITEM: ocp.args.JsonRestore()}))
    return restored[MODEL_ITEM]


def load_params(root: str, step: int, *, as_numpy: bool = True) -> Any:
    """Restore the parameter tree; NumPy on the host by default (for export and conversion)."""
    with _manager(root, read_only=True) as manager:
        item_dir = paths.join(root, str(step), PARAMS_ITEM)
        metadata = ocp.PyTreeCheckpointer().metadata(item_dir).item_metadata.tree
        restore_type = np.ndarray if as_numpy else jax.Array
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=restore_type), metadata)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.PyTreeRestore(restore_args=restore_args)}),
        )
    return restored[PARAMS_ITEM]


def tokenizer_path(root: str) -> str | None:
    path = paths.join(root, TOKENIZER_DIR)
    return path if paths.isdir(path) else None
