"""Small helpers shared by the data tests (a unique module name: tests dirs share sys.path)."""

import json
import os

from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def run(cfg: DataConfig, tokenizer, process_index=0, process_count=1):
    """All batches of a pipeline, closed afterwards."""
    pipeline = make_pipeline(cfg, tokenizer, process_index=process_index, process_count=process_count)
    try:
        return list(pipeline), pipeline
    finally:
        pipeline.close()


def one_batch(rows_path, tokenizer, **kw):
    """The single batch of an unshuffled pipeline over one JSONL file."""
    kw.setdefault("shuffle", False)
    kw.setdefault("batch_size", 1)
    cfg = DataConfig(sources=[{"path": rows_path}], **kw)
    batches, _ = run(cfg, tokenizer)
    assert len(batches) == 1, len(batches)
    return batches[0]


def row(batch, r):
    """Tokens and loss mask of row r without padding (segment_ids > 0)."""
    keep = batch.segment_ids_BxL[r] > 0
    return batch.tokens_BxL[r][keep].tolist(), batch.loss_mask_BxL[r][keep].tolist()
