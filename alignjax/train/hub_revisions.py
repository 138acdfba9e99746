"""A run's inputs from the Hub, settled when it starts: its Hub datasets opened (so a
missing repository, revision or split stops it before anything compiles), and the commits
its model settings resolved to, kept in its run directory.

`model.hf_path` (and `model.lora.from_peft`) may name a Hub repository at a branch or tag
that moves. The first start records the commit SHA each one resolved to in
`<run_dir>/hub_revisions.json`; every later start of the same run (a resume, after
SIGKILL or preemption) reads that commit instead of the branch's newest, so the policy's
base and the reference are the weights the run began with. A config that asks for another
repository or revision than the one recorded is resolved anew and recorded again.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax

from alignjax.convert.loading import LoadedModel, ModelSection
from alignjax.core import hub, paths
from alignjax.core.fileio import atomic_write_json
from alignjax.data.config import check_source_mapping
from alignjax.data.hub_source import is_hub_source
from alignjax.data.sources import open_sources
from alignjax.train.config import sources_from, stages

FILE_NAME = "hub_revisions.json"

log = logging.getLogger("alignjax.train")


def _entry(name: str | None, requested: str | None, commit: str) -> dict:
    return {"name": name, "requested": requested, "commit": commit}


def _pinned(
    entry: dict | None, key: str, name: str | None, requested: str | None, run_dir: str
) -> str | None:
    """The recorded commit for `name` at `requested`, when the record is for exactly that."""
    if entry is None or name is None or (entry["name"], entry["requested"]) != (name, requested):
        return requested
    if requested != entry["commit"]:
        log.info(
            "%s=%s: commit %s, as recorded in %s when the run started",
            key,
            name,
            entry["commit"],
            paths.join(run_dir, FILE_NAME),
        )
    return entry["commit"]


def _recorded(run_dir: str) -> dict:
    path = paths.join(run_dir, FILE_NAME)
    if not paths.exists(path):
        return {}
    with paths.open(path) as f:
        return json.load(f)


def pinned_model(run_dir: str, section: ModelSection) -> ModelSection:
    """`section` with the revisions this run recorded in place of the branches they named."""
    recorded = _recorded(run_dir)
    if not recorded:
        return section
    revision = _pinned(
        recorded.get("model.hf_path"), "model.hf_path", section.hf_path, section.revision, run_dir
    )
    lora = section.lora
    if lora is not None and lora.from_peft is not None:
        peft_revision = _pinned(
            recorded.get("model.lora.from_peft"),
            "model.lora.from_peft",
            lora.from_peft,
            lora.from_peft_revision,
            run_dir,
        )
        if peft_revision != lora.from_peft_revision:
            lora = dataclasses.replace(lora, from_peft_revision=peft_revision)
    return dataclasses.replace(section, revision=revision, lora=lora)


def record(run_dir: str, section: ModelSection, loaded: LoadedModel) -> None:
    """Writes (process 0) the commits `section`'s Hub names resolved to, keyed by setting,
    with the revision each one asked for; nothing when no setting names the Hub."""
    entries = {}
    if loaded.hub is not None:
        entries["model.hf_path"] = _entry(section.hf_path, section.revision, loaded.hub.commit)
    lora = section.lora
    if lora is not None and lora.from_peft is not None:
        peft = hub.resolve(lora.from_peft, revision=lora.from_peft_revision, key="model.lora.from_peft")
        if peft is not None:
            entries["model.lora.from_peft"] = _entry(lora.from_peft, lora.from_peft_revision, peft.commit)
    if jax.process_index() != 0 or not entries:
        return
    recorded = _recorded(run_dir)
    # A resumed run's section carries the recorded commits: what it asked for stays as first recorded.
    for key, entry in entries.items():
        old = recorded.get(key)
        if old is not None and old["name"] == entry["name"] and old["commit"] == entry["commit"]:
            entries[key] = old
    if entries != recorded:
        atomic_write_json(paths.join(run_dir, FILE_NAME), entries, indent=2)


def open_hub_datasets(cfg) -> None:
    """Fetches and opens every Hub dataset the run's stages read (`data.train`, `data.eval`),
    so their errors come first; the later opening reads them from the cache."""
    for stage in stages(cfg):
        data = stage.config.data
        evals = (
            data.eval
            if isinstance(data.eval, dict) and not {"path", "hub"} & set(data.eval)
            else {"": data.eval}
        )
        named = [("data.train", data.train)] + [
            (f"data.eval.{name}" if name else "data.eval", value) for name, value in evals.items()
        ]
        for key, value in named:
            for i, source in enumerate(sources_from(value, key)):
                if is_hub_source(source):
                    check_source_mapping(source, f"{key}[{i}]")
                    open_sources(source, f"{key}[{i}]")
