"""Sharding over processes and workers, determinism, epochs, and exact resume."""

import collections
import json

import numpy as np
import pytest
from datatest_helpers import run, write_jsonl

from alignjax.data.config import DataConfig
from alignjax.data.pipeline import load_state, make_pipeline, save_state

N_RECORDS = 37


@pytest.fixture()
def records_path(tmp_path):
    rows = [
        {"prompt": f"r{i}", "chosen": "y" * (i % 5 + 1), "rejected": "n" * (i % 3 + 1)}
        for i in range(N_RECORDS)
    ]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def _cfg(path, **kw):
    base = dict(
        sources=[{"path": path}],
        max_length=16,
        max_prompt_length=8,
        batch_size=4,
        buckets=[16],
        seed=11,
    )
    base.update(kw)
    return DataConfig(**base)


def _prompts(batch):
    """Record prompts of the valid pairs in a batch (chosen sequences), in order."""
    out = []
    for r in range(batch.tokens_BxL.shape[0]):
        for s in range(batch.segment_pair_index_BxS.shape[1]):
            seg = batch.segment_ids_BxL[r] == s + 1
            pair = batch.segment_pair_index_BxS[r, s]
            if seg.any() and batch.segment_is_chosen_BxS[r, s] and batch.pair_valid_P[pair]:
                prompt = batch.tokens_BxL[r][seg & (batch.loss_mask_BxL[r] == 0)][1:]
                out.append(bytes(prompt.astype(np.uint8)).decode())
    return out


def _all_prompts(batches):
    return [p for x in batches for p in _prompts(x)]


def _as_lists(batches):
    return [(x.tokens_BxL.tolist(), x.segment_ids_BxL.tolist(), x.pair_valid_P.tolist()) for x in batches]


def _shards_cover_every_record_once(path, byte_tok, **kw):
    seen = collections.Counter()
    per_host = []
    for process_index in range(2):
        batches, _ = run(_cfg(path, num_epochs=1, **kw), byte_tok, process_index, 2)
        prompts = _all_prompts(batches)
        per_host.append(set(prompts))
        seen.update(prompts)
        assert all(x.pair_valid_P.shape == (2,) for x in batches)  # global batch 4 over 2 hosts
    assert seen == collections.Counter(f"r{i}" for i in range(N_RECORDS))
    assert not per_host[0] & per_host[1]


def test_two_processes_see_every_record_exactly_once(records_path, byte_tok):
    _shards_cover_every_record_once(records_path, byte_tok)


@pytest.mark.slow
def test_two_processes_times_two_workers_see_every_record_exactly_once(records_path, byte_tok):
    _shards_cover_every_record_once(records_path, byte_tok, worker_count=2)


def test_epochs_each_see_every_record_once_in_a_new_order(records_path, byte_tok):
    batches, p = run(_cfg(records_path, num_epochs=2, batch_size=1), byte_tok)
    prompts = _all_prompts(batches)
    first, second = prompts[:N_RECORDS], prompts[N_RECORDS:]
    assert sorted(first) == sorted(second) == sorted(f"r{i}" for i in range(N_RECORDS))
    assert first != second
    assert [r["epoch"] for r in p.epoch_reports] == [0, 1]


def test_same_seed_same_batches_other_seed_other_order(records_path, byte_tok):
    a, _ = run(_cfg(records_path), byte_tok)
    b, _ = run(_cfg(records_path), byte_tok)
    c, _ = run(_cfg(records_path, seed=12), byte_tok)
    assert _as_lists(a) == _as_lists(b)
    assert _all_prompts(a) != _all_prompts(c)


def test_no_shuffle_keeps_file_order(records_path, byte_tok):
    batches, _ = run(_cfg(records_path, shuffle=False), byte_tok)
    assert _all_prompts(batches) == [f"r{i}" for i in range(N_RECORDS)]


def _resume_matches(path, byte_tok, tmp_path, k, **kw):
    cfg = _cfg(path, num_epochs=2, **kw)
    full, _ = run(cfg, byte_tok)
    stopped = make_pipeline(cfg, byte_tok, process_index=0, process_count=1)
    head = [next(stopped) for _ in range(k)]
    state_file = str(tmp_path / "data_state.json")
    save_state(stopped, state_file)
    metrics_at_stop = stopped.metrics()
    stopped.close()
    resumed = make_pipeline(cfg, byte_tok, process_index=0, process_count=1)
    load_state(resumed, state_file)
    assert resumed.metrics() == metrics_at_stop
    tail = list(resumed)
    resumed.close()
    assert _as_lists(head) == _as_lists(full[:k])
    assert _as_lists(tail) == _as_lists(full[k:])
    assert json.loads(json.dumps(resumed.get_state())) == resumed.get_state()


@pytest.mark.parametrize("k", [1, 5, 12])
def test_resume_from_saved_state_gives_the_same_next_batches(records_path, byte_tok, tmp_path, k):
    _resume_matches(records_path, byte_tok, tmp_path, k)


def test_resume_with_packing_rereads_the_held_back_pair(records_path, byte_tok, tmp_path):
    _resume_matches(records_path, byte_tok, tmp_path, 3, packing=True, batch_size=1, pack_length=40)


@pytest.mark.slow
def test_resume_with_worker_processes(records_path, byte_tok, tmp_path):
    _resume_matches(records_path, byte_tok, tmp_path, 4, worker_count=2)


def test_state_of_another_version_is_refused(records_path, byte_tok):
    p = make_pipeline(_cfg(records_path), byte_tok, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="version"):
        p.set_state({"version": 0})


def test_config_errors_name_the_key(records_path, byte_tok):
    with pytest.raises(ValueError, match=r"data.batch_size: 5 is not divisible by process_count=2"):
        make_pipeline(_cfg(records_path, batch_size=5), byte_tok, process_index=0, process_count=2)
    with pytest.raises(ValueError, match=r"data.max_prompt_length"):
        make_pipeline(_cfg(records_path, max_prompt_length=20), byte_tok, process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"unknown key\(s\) data.max_len"):
        DataConfig.from_dict({"max_len": 3})


def test_from_dict_builds_nested_config(records_path):
    cfg = DataConfig.from_dict(
        {
            "sources": [records_path, {"path": records_path, "weight": 2}],
            "templates": {"weights": "{a:.0%} a"},
            "packing": True,
        }
    )
    assert cfg.sources[1].weight == 2 and cfg.sources[0].path == records_path
    assert cfg.templates.objectives == ("a",)


def test_state_stays_small_over_many_epochs(records_path, byte_tok):
    cfg = _cfg(records_path, num_epochs=None, batch_size=8, packing=True, pack_length=64)
    with make_pipeline(cfg, byte_tok, process_index=1, process_count=2) as p:
        for _ in range(60):
            next(p)
        state = p.get_state()
    assert state["epoch"] >= 20
    assert len(json.dumps(state)) < 400
