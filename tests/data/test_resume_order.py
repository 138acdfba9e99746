"""Resuming on another number of processes (or data workers): every record of the global order
is consumed exactly once across the resume, whatever each process had consumed when it stopped
(records dropped as bad, records held back by packing, workers interleaving)."""

import collections
import dataclasses
import json

import pytest
from datatest_helpers import write_jsonl

from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.data.positions import LaneProgress, continue_order

N_RECORDS = 41
BAD = {5, 17, 18, 30}  # chosen == rejected: dropped (identical_responses) under on_bad_record: skip


@pytest.fixture()
def records_path(tmp_path):
    rows = [
        {
            "prompt": f"q{i}",
            "chosen": "same" if i in BAD else "y" * (i % 7 + 1),
            "rejected": "same" if i in BAD else "n" * (i % 3 + 1),
        }
        for i in range(N_RECORDS)
    ]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def _cfg(path, **kw):
    base = dict(
        sources=[{"path": path}],
        max_length=24,
        max_prompt_length=8,
        batch_size=4,
        seed=7,
        num_epochs=1,
        on_bad_record="skip",
    )
    base.update(kw)
    return DataConfig(**base)


def _keys(batches) -> list[int]:
    return [k for x in batches for k, valid in zip(x.record_key_P.tolist(), x.pair_valid_P) if valid]


def _stop_and_resume(cfg, tokenizer, before: int, after: int, steps: int, workers_after=None):
    """`before` processes take `steps` batches each and save; `after` processes resume from
    their states and read to the end. Returns (keys consumed, skipped counts at the end, states)."""
    first = [make_pipeline(cfg, tokenizer, process_index=p, process_count=before) for p in range(before)]
    keys = []
    for pipeline in first:
        keys += _keys(next(pipeline) for _ in range(steps))
    states = json.loads(json.dumps([p.get_state() for p in first]))  # as a checkpoint stores them
    for pipeline in first:
        pipeline.close()
    cfg_after = cfg if workers_after is None else dataclasses.replace(cfg, worker_count=workers_after)
    skipped = collections.Counter()
    for q in range(after):
        pipeline = make_pipeline(cfg_after, tokenizer, process_index=q, process_count=after)
        pipeline.resume_from(states)
        keys += _keys(pipeline)
        skipped.update(pipeline.skipped_counts())
        pipeline.close()
    return keys, skipped, states


def _every_good_record_once(keys):
    rows = sorted(k & ((1 << 40) - 1) for k in keys)
    assert rows == [i for i in range(N_RECORDS) if i not in BAD], collections.Counter(rows).most_common(3)


@pytest.mark.parametrize(
    "before, after, layout",
    [
        (2, 1, {}),
        (1, 2, {}),
        (2, 3, {"batch_size": 6}),
        (3, 2, {"batch_size": 6, "packing": True, "pack_length": 48, "max_sequences_per_row": 4}),
        (1, 2, {"packing": True, "pack_length": 48, "max_sequences_per_row": 4}),
    ],
)
def test_every_record_is_consumed_once_across_a_change_of_process_count(
    records_path, byte_tok, before, after, layout
):
    keys, skipped, states = _stop_and_resume(_cfg(records_path, **layout), byte_tok, before, after, steps=2)
    _every_good_record_once(keys)
    # Bad records are consumed once too: the counts carry over, summed, and none is counted twice.
    assert skipped == {"identical_responses": len(BAD)}
    if layout.get("packing"):
        # Packing held a record back somewhere (read, not consumed): the case the frontier is for.
        assert any(s["order"]["done"] or s["order"]["frontier"] != s["order"]["offset"] for s in states)


@pytest.mark.slow
def test_resume_from_two_data_workers_per_process_to_none(records_path, byte_tok):
    """Workers consume interleaved slices of a process's lane: its consumption has gaps."""
    cfg = _cfg(records_path, worker_count=2)
    keys, skipped, states = _stop_and_resume(cfg, byte_tok, 2, 1, steps=3, workers_after=0)
    _every_good_record_once(keys)
    assert skipped == {"identical_responses": len(BAD)}
    assert any(s["order"]["done"] for s in states), "the workers left no gap: the case is not exercised"


@pytest.mark.parametrize("last", [3, 1])
def test_a_resumed_lane_is_saved_and_resumed_again(records_path, byte_tok, last):
    """2 processes -> 3 (which skip what the 2 had consumed beyond their common position) ->
    `last` processes: still every record once (the skipped positions travel with the state)."""
    cfg = _cfg(records_path, batch_size=6)
    first = [make_pipeline(cfg, byte_tok, process_index=p, process_count=2) for p in range(2)]
    keys = []
    for pipeline in first:
        keys += _keys([next(pipeline), next(pipeline)])
    states = [p.get_state() for p in first]
    middle = [make_pipeline(cfg, byte_tok, process_index=q, process_count=3) for q in range(3)]
    for pipeline in middle:
        pipeline.resume_from(states)
        keys += _keys([next(pipeline)])
    states = json.loads(json.dumps([p.get_state() for p in middle]))
    assert any(s["order"]["excluded"] for s in states)
    for q in range(last):
        pipeline = make_pipeline(cfg, byte_tok, process_index=q, process_count=last)
        pipeline.resume_from(states)
        keys += _keys(pipeline)
    _every_good_record_once(keys)


def test_same_process_count_resumes_exactly(records_path, byte_tok):
    cfg = _cfg(records_path, num_epochs=2)
    whole = [make_pipeline(cfg, byte_tok, process_index=p, process_count=2) for p in range(2)]
    expected = [[x.tokens_BxL.tolist() for x in p] for p in whole]
    stopped = [make_pipeline(cfg, byte_tok, process_index=p, process_count=2) for p in range(2)]
    for p in stopped:
        next(p), next(p)
    states = [p.get_state() for p in stopped]
    for q in range(2):
        resumed = make_pipeline(cfg, byte_tok, process_index=q, process_count=2)
        resumed.resume_from(states)
        assert [x.tokens_BxL.tolist() for x in resumed] == expected[q][2:]


def test_a_state_saved_before_positions_were_recorded_resumes_on_another_count(records_path, byte_tok):
    """Version 1 states (no place in the order) with one reader per process: the place follows
    from the reader's index."""
    cfg = _cfg(records_path)
    stopped = [make_pipeline(cfg, byte_tok, process_index=p, process_count=2) for p in range(2)]
    keys = []
    for pipeline in stopped:
        keys += _keys([next(pipeline), next(pipeline)])
    v1 = [
        {"version": 1, **{k: v for k, v in p.get_state().items() if k not in ("version", "order", "workers")}}
        for p in stopped
    ]
    resumed = make_pipeline(cfg, byte_tok, process_index=0, process_count=1)
    resumed.resume_from(v1)
    keys += _keys(resumed)
    _every_good_record_once(keys)


def test_continue_order_starts_at_the_smallest_frontier_and_skips_what_was_consumed_beyond():
    # Process 0 of 2 read 0, 2, 4 and (a worker ahead) 8; process 1 read 1, 3, 5, 7, 9.
    saved = [LaneProgress(0, 2, 0, 6, {8}), LaneProgress(0, 2, 1, 11, set())]
    one = continue_order(saved, 0, 1)
    # 7, 8, 9 were consumed: the single process reads 6, then 10.
    assert (one.start, one.stride, one.frontier, sorted(one.done)) == (6, 1, 6, [7, 8, 9])
    one.consume([6])
    assert one.frontier == 10
    three = [continue_order(saved, q, 3) for q in range(3)]
    assert [(lane.frontier, sorted(lane.done)) for lane in three] == [(6, [9]), (10, []), (11, [])]
    assert all(lane.start == 6 and lane.stride == 3 for lane in three)
