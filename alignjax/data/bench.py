"""`run_data_benchmark`: throughput of the whole data pipeline on synthetic preference data.

Writes a JSONL file of random pairs (plain or conversational) to a temporary
directory, runs `make_pipeline` over one epoch and reports examples/s and
tokens/s (non-padding tokens delivered to the trainer). Meant for
`alignjax bench data`; timing lives here, never in tests.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time

from alignjax.data.config import DataConfig, SourceConfig

_WORDS = (
    "the model answers helpful harmless question because data token align prefer "
    "reward policy reference sample batch shard epoch grain jax pair"
).split()


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def write_synthetic_pairs(
    path: str, n_records: int, *, conversational: bool, seed: int = 0, mean_words: int = 60
) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_records):
            prompt = _sentence(rng, rng.randint(mean_words // 4, mean_words // 2))
            chosen = _sentence(rng, rng.randint(mean_words // 2, mean_words * 3 // 2))
            rejected = _sentence(rng, rng.randint(mean_words // 2, mean_words * 3 // 2))
            if conversational:
                row = {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            else:
                row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            f.write(json.dumps(row) + "\n")


def run_data_benchmark(
    *,
    n_records: int = 2000,
    batch_size: int = 16,
    max_length: int = 512,
    packing: bool = False,
    conversational: bool = True,
    worker_count: int = 0,
    read_threads: int = 4,
    tokenizer=None,
    mean_words: int = 60,
    seed: int = 0,
) -> dict:
    """Run one epoch over `n_records` synthetic pairs; return throughput numbers.

    `tokenizer` defaults to the built-in byte tokenizer (one token per byte, so
    tokens/s is pessimistic next to a BPE tokenizer's).
    """
    if tokenizer is None:
        from alignjax.data.byte_tokenizer import make_byte_tokenizer

        tokenizer = make_byte_tokenizer()
    from alignjax.data.pipeline import make_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pairs.jsonl")
        write_synthetic_pairs(
            path, n_records, conversational=conversational, seed=seed, mean_words=mean_words
        )
        cfg = DataConfig(
            sources=[SourceConfig(path=path)],
            max_length=max_length,
            max_prompt_length=max_length // 2,
            batch_size=batch_size,
            packing=packing,
            worker_count=worker_count,
            read_threads=read_threads,
            num_epochs=1,
            seed=seed,
        )
        start = time.perf_counter()
        pipeline = make_pipeline(cfg, tokenizer, process_index=0, process_count=1)
        first_batch_s = None
        n_batches = 0
        try:
            for _ in pipeline:
                n_batches += 1
                if first_batch_s is None:
                    first_batch_s = time.perf_counter() - start
            seconds = time.perf_counter() - start
            metrics = pipeline.metrics()
        finally:
            pipeline.close()
    return {
        "examples_per_s": metrics["data/examples"] / seconds,
        "tokens_per_s": metrics["data/tokens"] / seconds,
        "seconds": seconds,
        "first_batch_s": first_batch_s,
        "examples": int(metrics["data/examples"]),
        "tokens": int(metrics["data/tokens"]),
        "batches": n_batches,
        "padding_fraction": metrics["data/padding_fraction"],
        "skipped": int(metrics["data/skipped/total"]),
        "config": {
            "n_records": n_records,
            "batch_size": batch_size,
            "max_length": max_length,
            "packing": packing,
            "conversational": conversational,
            "worker_count": worker_count,
            "mean_words": mean_words,
            "read_threads": read_threads,
            "tokenizer": type(tokenizer).__name__,
        },
    }
