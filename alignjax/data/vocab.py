"""Stable string -> index vocabularies (P-DPO user ids, preference conditions).

Index 0 is reserved: the generic user (P-DPO's e_0) or "no / unseen condition".
Known keys get 1..N in sorted order, so the mapping depends only on the set of
keys, not on file order or shuffling, and every host builds the same one.
Save it with the run: a model trained on these indices needs the same mapping
at inference (an unseen id falls back to 0).
"""

from __future__ import annotations

import json
from typing import Iterable

from alignjax.core import paths
from alignjax.core.fileio import atomic_write_json


class Vocab:
    def __init__(self, keys: Iterable[str], kind: str):
        self.kind = kind
        self.keys = sorted(set(keys))
        self._index = {k: i + 1 for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        """Number of known keys N (indices run 0..N)."""
        return len(self.keys)

    def index(self, key: str | int | None) -> int:
        return 0 if key is None else self._index.get(str(key), 0)

    def to_json(self) -> dict:
        return {"kind": self.kind, "keys": self.keys}

    def save(self, path: str) -> None:
        # Atomic: a crash never leaves a half-written vocabulary.
        atomic_write_json(path, self.to_json(), ensure_ascii=False, indent=1)

    @classmethod
    def load(cls, path: str) -> "Vocab":
        with paths.open(path, encoding="utf-8") as f:
            d = json.load(f)
        if not isinstance(d, dict) or not isinstance(d.get("keys"), list):
            raise ValueError(f"{path}: not a vocabulary file (expected {{kind, keys: [...]}})")
        return cls(d["keys"], d.get("kind", "unknown"))

    def __repr__(self):
        return f"Vocab({self.kind}, {len(self)} keys)"
