"""The model card (`README.md`) of an exported training checkpoint, as the Hub shows it.

Its metadata block names the base model (a Hub id, so the Hub links the two), the library
that loads the files (transformers, or peft for an adapter) and the method; its text says
how it was trained: the base and its commit, the method, the final training and eval
metrics, and the run's config inline. Everything comes from the run directory the
checkpoint lives in (`config.yaml`, `metrics.jsonl`, `hub_revisions.json`) and the
checkpoint's own metadata; a checkpoint outside a run directory gets what its metadata says.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from alignjax.convert import model_checkpoint as mc
from alignjax.core import hub, paths
from alignjax.train.hub_revisions import FILE_NAME as REVISIONS_FILE
from alignjax.train.metrics import JSONL_NAME
from alignjax.train.run_config import RUN_CONFIG_NAME


def _read(path: str) -> str | None:
    return paths.read_text(path) if paths.exists(path) else None


def _final_metrics(run_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The last training record (one with a loss) and the last eval record of a run."""
    text = _read(paths.join(run_dir, JSONL_NAME)) or ""
    train, evaluation = {}, {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a crash leaves at most one partial line
            continue
        if "loss" in record:
            train = record
        if any(k.startswith("eval/") for k in record):
            evaluation = record
    return train, evaluation


def _base(meta: dict[str, Any], run_dir: str | None, tree: dict[str, Any]) -> tuple[str | None, str | None]:
    """(the base model's name, its Hub commit or None)."""
    lora = meta.get("lora")
    if lora:
        return lora.get("base_model_name_or_path"), lora.get("base_revision")
    recorded = json.loads(_read(paths.join(run_dir, REVISIONS_FILE)) or "{}") if run_dir else {}
    entry = recorded.get("model.hf_path")
    if entry:
        return entry["name"].removeprefix(hub.HUB_PREFIX), entry["commit"]
    model = tree.get("model") or {}
    return model.get("hf_path") or (f"preset:{model['preset']}" if model.get("preset") else None), None


def _methods(tree: dict[str, Any]) -> list[str]:
    """The objectives (`loss.type`) of the run's stages, in order."""
    loss = (tree.get("loss") or {}).get("type", "sigmoid")
    types = [s.get("loss.type", loss) for s in tree.get("stages") or []] or [loss]
    return [t if isinstance(t, str) else " + ".join(t) for t in types]


def _metrics_table(title: str, record: dict[str, Any]) -> list[str]:
    if not record:
        return []
    rows = [f"| {k} | {v:.6g} |" for k, v in record.items() if k != "step" and isinstance(v, (int, float))]
    return [f"### {title} (step {record['step']})", "", "| metric | value |", "|---|---|", *rows, ""]


def model_card(ckpt: str, repo_id: str, written: list[str]) -> str:
    """The card of the export of checkpoint `ckpt` (root or step) that wrote `written`."""
    root, step = mc.resolve(ckpt)
    meta = mc.load_meta(root, step)
    run_dir = paths.dirname(root) if paths.basename(root) == "checkpoints" else None
    config_text = _read(paths.join(run_dir, RUN_CONFIG_NAME)) if run_dir else None
    tree = yaml.safe_load(config_text) if config_text else {}
    base, commit = _base(meta, run_dir, tree)
    adapter = "adapter_config.json" in written
    classifier = any(
        a.endswith("ForSequenceClassification") for a in meta["hf_config"].get("architectures") or []
    )
    methods = _methods(tree) if tree else []
    header: dict[str, Any] = {
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-classification" if classifier else "text-generation",
        "tags": ["alignjax", *dict.fromkeys(methods)],
    }
    if commit is not None:  # a Hub model: the Hub links the two
        header["base_model"] = base
    what = "A PEFT LoRA adapter" if adapter else ("A reward model" if classifier else "A model")
    method = ", then ".join(f"`{m}`" for m in methods) or "unknown (no run config beside the checkpoint)"
    source = f"`{base}`" + (f" at commit `{commit}`" if commit else "") if base else "an unnamed base"
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        f"# {repo_id}",
        "",
        f"{what} trained with alignjax (loss.type {method}) from {source}.",
        f"Exported from checkpoint step {step}.",
        "",
    ]
    if adapter:
        lines += [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f'base = AutoModelForCausalLM.from_pretrained("{base}"'
            + (f', revision="{commit}")' if commit else ")"),
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
            "```",
            "",
        ]
    if run_dir is not None:
        train, evaluation = _final_metrics(run_dir)
        if train or evaluation:
            lines += [
                "## Final metrics",
                "",
                *_metrics_table("Training", train),
                *_metrics_table("Eval", evaluation),
            ]
    if config_text:
        lines += ["## Training config", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)
