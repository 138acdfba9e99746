"""The one way the pipeline gets a tokenizer: a local directory, or the built-in bytes."""

from __future__ import annotations

import os

BYTE_TOKENIZER = "byte"


def load_tokenizer(spec: str):
    """`"byte"` -> the built-in byte tokenizer; a directory -> `AutoTokenizer.from_pretrained`.

    Only local directories are accepted (a checkpoint's, or one written with
    `save_pretrained`): training must not depend on reaching a model hub.
    """
    if spec == BYTE_TOKENIZER:
        from alignjax.data.byte_tokenizer import make_byte_tokenizer

        return make_byte_tokenizer()
    if not os.path.isdir(spec):
        raise ValueError(
            f"tokenizer {spec!r} is not a local directory; pass the model's directory "
            "(with tokenizer.json / tokenizer_config.json) or 'byte' for the built-in one"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec)
