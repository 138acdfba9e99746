"""How trained parameters are grouped: `{"decoder": ..., <part>: ...}`.

The decoder's tree sits under "decoder"; a method's own trainable parts sit beside it
under their names ("mask_head" for SparsePO's learned masks, "user_model" for P-DPO).
A converted model holds the decoder's tree alone, at the top level, and so did training
checkpoints written before parts were grouped. A LoRA run trains no decoder tree: its
adapters sit under "lora", and the frozen base travels as the reference (models/lora.py).
"""

from __future__ import annotations

from typing import Any

import jax

from alignjax.models.lora import Adapted, base_of
from alignjax.models.mask_head import MASK_HEAD_KEY
from alignjax.models.user_model import USER_MODEL_KEY

DECODER = "decoder"
LORA = "lora"
_UNGROUPED_PARTS = (MASK_HEAD_KEY, USER_MODEL_KEY)
# Folded into the step's key for the adapters' dropout, so it draws apart from the other
# users of that key (SparsePO's mask-head dropout takes the key itself).
_LORA_DROPOUT_STREAM = 0x10AA


def is_grouped(tree: dict[str, Any]) -> bool:
    return DECODER in tree or LORA in tree


def policy_decoder(params: dict[str, Any], ref_params, rng=None):
    """The policy's decoder: the trained tree, or for LoRA the frozen base (carried by the
    reference, with or without adapters of its own) with the trained adapters. `rng`: the
    training step's key, for the adapters' dropout (None in eval: dropout off)."""
    if LORA in params:
        dropout_rng = None if rng is None else jax.random.fold_in(rng, _LORA_DROPOUT_STREAM)
        return Adapted(base_of(ref_params), params[LORA], dropout_rng)
    return params[DECODER]


def split_parts(tree: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(decoder tree, {part name: tree}) of any saved parameter tree."""
    if LORA in tree:
        raise ValueError(
            "a LoRA checkpoint holds adapters, not a decoder: export it (alignjax convert orbax-to-hf "
            "writes a PEFT adapter, or --merge the full weights) or load it with its base"
        )
    if is_grouped(tree):
        return tree[DECODER], {k: v for k, v in tree.items() if k != DECODER}
    parts = {k: tree[k] for k in _UNGROUPED_PARTS if k in tree}
    return {k: v for k, v in tree.items() if k not in parts}, parts
