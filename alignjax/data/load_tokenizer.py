"""The one way the pipeline gets a tokenizer (a directory, local or in a bucket, or the
built-in bytes), and the one rule for the id that pads its batches."""

from __future__ import annotations

from alignjax.core import paths
from alignjax.convert.model_checkpoint import TOKENIZER_FILES
from alignjax.data.records import DataSetupError

BYTE_TOKENIZER = "byte"


def load_tokenizer(spec: str):
    """`"byte"` -> the built-in byte tokenizer; a directory -> `AutoTokenizer.from_pretrained`.

    Only directories are accepted (a checkpoint's, or one written with `save_pretrained`),
    local or a bucket URL: training must not depend on reaching a model hub. From a bucket,
    only the tokenizer's files and config.json are fetched (into `paths.cache_root()`).
    """
    if spec == BYTE_TOKENIZER:
        from alignjax.data.byte_tokenizer import make_byte_tokenizer

        return make_byte_tokenizer()
    if not paths.isdir(spec):
        raise ValueError(
            f"tokenizer {spec!r} is not a directory; pass the model's directory "
            "(with tokenizer.json / tokenizer_config.json) or 'byte' for the built-in one"
        )
    from transformers import AutoTokenizer

    local = paths.local_copy(spec, names=[*TOKENIZER_FILES, "config.json"])
    tokenizer = AutoTokenizer.from_pretrained(local)
    if local != spec:
        tokenizer.name_or_path = spec  # messages name where it came from, not the cache
    return tokenizer


def tokenizer_pad_id(tokenizer) -> int:
    """The id that fills padding: the tokenizer's pad token, else its EOS token (many causal
    LMs, Llama's among them, ship without a pad token). Padding is masked out everywhere, so
    any real id works; these two keep it inside the vocabulary the model was trained on."""
    for attr in ("pad_token_id", "eos_token_id"):
        token_id = getattr(tokenizer, attr, None)
        if token_id is not None:
            return int(token_id)
    where = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise DataSetupError(
        f"tokenizer {where!r} has neither a pad token nor an EOS token, so batches cannot be "
        "padded; set pad_token or eos_token in its tokenizer_config.json"
    )
