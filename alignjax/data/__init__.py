"""The data pipeline: files -> validated, conditioned, tokenized, batched arrays (Grain).

Entry point: `make_pipeline(cfg, tokenizer, process_index=..., process_count=...)`.
`alignjax.data.ops` (pair_sums, remove_user_slots) imports JAX; the rest is NumPy
so worker processes start fast.
"""

from alignjax.data.byte_tokenizer import make_byte_tokenizer
from alignjax.data.config import DataConfig, SourceConfig, TemplateConfig
from alignjax.data.load_tokenizer import load_tokenizer, tokenizer_pad_id
from alignjax.data.pipeline import Pipeline, load_state, make_pipeline, save_state
from alignjax.data.record_types.cut import CutBatch
from alignjax.data.record_types.preference import PairBatch
from alignjax.data.record_types.prompt import PromptBatch
from alignjax.data.record_types.sft import SftBatch
from alignjax.data.record_types.unpaired import UnpairedBatch
from alignjax.data.records import DataError
from alignjax.data.sources import write_array_record
from alignjax.data.vocab import Vocab

__all__ = [
    "CutBatch",
    "DataConfig",
    "DataError",
    "PairBatch",
    "Pipeline",
    "PromptBatch",
    "SftBatch",
    "SourceConfig",
    "TemplateConfig",
    "UnpairedBatch",
    "Vocab",
    "load_state",
    "load_tokenizer",
    "make_byte_tokenizer",
    "make_pipeline",
    "save_state",
    "tokenizer_pad_id",
    "write_array_record",
]
