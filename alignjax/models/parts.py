"""How trained parameters are grouped: `{"decoder": ..., <part>: ...}`.

The decoder's tree sits under "decoder"; a method's own trainable parts sit beside it
under their names ("mask_head" for SparsePO's learned masks, "user_model" for P-DPO).
A converted model holds the decoder's tree alone, at the top level, and so did training
checkpoints written before parts were grouped.
"""

from __future__ import annotations

from typing import Any

from alignjax.models.mask_head import MASK_HEAD_KEY
from alignjax.models.user_model import USER_MODEL_KEY

DECODER = "decoder"
_UNGROUPED_PARTS = (MASK_HEAD_KEY, USER_MODEL_KEY)


def is_grouped(tree: dict[str, Any]) -> bool:
    return DECODER in tree


def split_parts(tree: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(decoder tree, {part name: tree}) of any saved parameter tree."""
    if is_grouped(tree):
        return tree[DECODER], {k: v for k, v in tree.items() if k != DECODER}
    parts = {k: tree[k] for k in _UNGROUPED_PARTS if k in tree}
    return {k: v for k, v in tree.items() if k not in parts}, parts
