"""A checkpoint exported to Hugging Face files and pushed to a Hub repository, with its
model card: `alignjax convert orbax-to-hf ... --push-to-hub` and `logging.push_to_hub`."""

from __future__ import annotations

import tempfile

import jax

from alignjax.convert.api import orbax_to_hf
from alignjax.core import paths
from alignjax.core.fileio import atomic_write_text
from alignjax.core.hub_push import check_can_push, push_folder
from alignjax.train.model_card import model_card


def export_and_push(
    ckpt: str,
    out_dir: str,
    repo: str | None,
    *,
    merge: bool = False,
    max_shard_bytes: int = 5 * 1024**3,
    private: bool = False,
    revision: str | None = None,
    key: str = "--push-to-hub",
    revision_key: str = "--revision",
) -> tuple[list[str], str | None]:
    """Exports `ckpt` to `out_dir` (`orbax_to_hf`); with `repo`, writes its model card there
    and pushes the directory from process 0. Returns (the files written, the commit URL or
    None)."""
    repo_id = check_can_push(repo, key) if repo else None  # before the export, which may be long
    written = orbax_to_hf(ckpt, out_dir, max_shard_bytes=max_shard_bytes, merge=merge)
    if repo_id is None:
        return written, None
    # Reading the checkpoint's metadata is collective over processes: every process builds the
    # card, process 0 alone writes and pushes it.
    card = model_card(ckpt, repo_id, written)
    if jax.process_index() != 0:
        return written, None
    atomic_write_text(paths.join(out_dir, "README.md"), card)
    url = push_folder(
        out_dir,
        repo_id,
        key=key,
        revision_key=revision_key,
        private=private,
        revision=revision,
        message=f"alignjax export of {ckpt}",
    )
    return [*written, "README.md"], url


def push_finished_run(cfg) -> None:
    """`logging.push_to_hub`: the run's last checkpoint, exported and pushed when training
    ends. Every process exports (restoring a checkpoint is collective), into a scratch
    directory of its own; process 0 pushes."""
    section = cfg.logging
    if not section.push_to_hub:
        return
    with tempfile.TemporaryDirectory(prefix="alignjax-push-") as out_dir:
        export_and_push(
            paths.join(cfg.run_dir, "checkpoints"),
            out_dir,
            section.push_to_hub,
            private=section.push_private,
            revision=section.push_revision,
            key="logging.push_to_hub",
            revision_key="logging.push_revision",
        )
