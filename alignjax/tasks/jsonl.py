"""Writing a task's record files."""

from __future__ import annotations

import json
import os
from typing import Any


def write_jsonl_files(out_dir: str, files: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """`{name: records}` -> `<out_dir>/<name>.jsonl`, one JSON object per line; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, records in files.items():
        paths[name] = os.path.join(out_dir, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    return paths
