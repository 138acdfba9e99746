"""Config mistakes that would train without error on the wrong thing, caught at load.

A recipe runs offline on a built-in demo task (`data.builtin`, `builtin:NAME` paths). When
the user points it at their own model or data, a stage left on `builtin:` paths would
quietly train the real model on the demo task (at the demo's learning rate): refused,
naming the key to set. `train.flip_eval` naming eval sets that do not exist would quietly
drop the steerability metric: refused too.
"""

from __future__ import annotations

from typing import Any


def _builtin_paths(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("builtin:") else []
    if isinstance(value, list):
        return [p for item in value for p in _builtin_paths(item)]
    if isinstance(value, dict):
        if "path" in value:
            return _builtin_paths(value["path"])
        return [p for item in value.values() for p in _builtin_paths(item)]
    return []


def _eval_names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict) and not {"path", "hub"} & set(value):  # named sets, not one source
        return list(value)
    return ["eval"]


def check_stage_data(base, stage_cfg, prefix: str, where: str) -> None:
    """`base`: the config before stage overrides; `prefix`: how to name this stage's keys in
    an override ("" or "stages.1."); `where`: how to name the stage in the message."""
    own = []
    if stage_cfg.model.hf_path is not None:
        own.append(f"model.hf_path={stage_cfg.model.hf_path}")
    if base.data.train is not None and not _builtin_paths(base.data.train):
        own.append(f"data.train={base.data.train}")
    if own:
        for key in ("train", "eval"):
            demo = _builtin_paths(getattr(stage_cfg.data, key))
            if demo:
                raise ValueError(
                    f"{where}reads the built-in demo task ({prefix}data.{key}: {', '.join(demo)}) although "
                    f"the run uses your own {' and '.join(own)}; set {prefix}data.{key}=YOUR_FILE "
                    "(the recipe's header lists the overrides for a real model)"
                )
    flip = stage_cfg.train.flip_eval
    if flip and stage_cfg.data.eval is not None:
        names = _eval_names(stage_cfg.data.eval)
        missing = [n for n in flip if n not in names]
        if len(flip) != 2 or missing:
            raise ValueError(
                f"{where}train.flip_eval={list(flip)} must name two of the eval sets "
                f"{names} (data.eval){f'; no set named {missing}' if missing else ''}: "
                f"set {prefix}train.flip_eval=null or name two sets of data.eval"
            )
