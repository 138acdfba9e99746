"""Record keys: each pair names its record (source, row) whatever the shuffle, epoch,
process, worker count or batch layout; padding pairs carry 0."""

import numpy as np
import pytest
from datatest_helpers import run, write_jsonl

from alignjax.data.config import DataConfig
from alignjax.data.mixing import MixtureMapDataset
from alignjax.data.records import MAX_SOURCE_ROWS, MAX_SOURCES, record_key, split_record_key

# Source 0 has rows a0..a6, source 1 has rows b0..b4; with blank lines in source 1 the
# row (0-based, non-empty lines) and the line number differ, and the key uses the row.
N_A, N_B = 7, 5


@pytest.fixture()
def two_sources(tmp_path):
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [{"prompt": f"a{i}", "chosen": "y" * (i % 4 + 1), "rejected": "n"} for i in range(N_A)],
    )
    b = str(tmp_path / "b.jsonl")
    with open(b, "w") as f:
        for i in range(N_B):
            f.write('\n{"prompt": "b%d", "chosen": "yy", "rejected": "nnn"}\n' % i)
    return [a, b]


# Golden values: (source + 1) << 40 | row, written out by hand.
EXPECTED = {
    **{f"a{i}": 1_099_511_627_776 + i for i in range(N_A)},
    **{f"b{i}": 2_199_023_255_552 + i for i in range(N_B)},
}


def _cfg(paths, **kw):
    base = dict(
        sources=[{"path": p} for p in paths],
        max_length=16,
        max_prompt_length=8,
        batch_size=4,
        buckets=[16],
        seed=3,
    )
    base.update(kw)
    return DataConfig(**base)


def _keys_by_prompt(batches):
    """(prompt text, key) of every pair slot, and the keys of padding pairs."""
    seen, padding = [], []
    for x in batches:
        assert x.record_key_P.dtype == np.int64 and x.record_key_P.shape == x.pair_valid_P.shape
        prompts = {}
        for r in range(x.tokens_BxL.shape[0]):
            for s in range(x.segment_pair_index_BxS.shape[1]):
                seg = x.segment_ids_BxL[r] == s + 1
                if seg.any() and x.segment_is_chosen_BxS[r, s]:
                    prompt = x.tokens_BxL[r][seg & (x.loss_mask_BxL[r] == 0)][1:]
                    prompts[int(x.segment_pair_index_BxS[r, s])] = bytes(prompt.astype(np.uint8)).decode()
        for p, key in enumerate(x.record_key_P.tolist()):
            if x.pair_valid_P[p]:
                seen.append((prompts[p], key))
            else:
                padding.append(key)
    return seen, padding


def test_record_key_golden():
    assert record_key(0, 0) == 1 << 40
    assert record_key(1, 5) == (2 << 40) + 5
    assert split_record_key(record_key(3, 123_456_789)) == (3, 123_456_789)


def test_the_largest_keys_fit_an_int64_and_one_past_them_is_an_error():
    last = record_key(MAX_SOURCES - 1, MAX_SOURCE_ROWS - 1)
    assert last == np.iinfo(np.int64).max and split_record_key(last) == (MAX_SOURCES - 1, MAX_SOURCE_ROWS - 1)
    with pytest.raises(ValueError, match=r"row 1099511627776 of data file 0: keys name at most"):
        record_key(0, MAX_SOURCE_ROWS)
    with pytest.raises(ValueError, match=r"row 0 of data file 8388607: .*split larger files, or merge"):
        record_key(MAX_SOURCES, 0)


class _HugeSource:
    def __len__(self):
        return MAX_SOURCE_ROWS + 1

    def __repr__(self):
        return "JsonlSource('huge.jsonl')"


def test_a_source_too_long_for_record_keys_fails_at_start_up_naming_it():
    with pytest.raises(ValueError, match=r"'huge.jsonl'\) has 1,099,511,627,777 rows.*split it into several"):
        MixtureMapDataset([_HugeSource()], [1.0], seed=0)


@pytest.mark.parametrize(
    "layout",
    [
        # 12 records in batches of 5: the last batch has padding pairs.
        dict(shuffle=False, num_epochs=1, batch_size=5),
        dict(num_epochs=2, batch_size=5),  # shuffled, every epoch a new order
        dict(num_epochs=1, packing=True, pack_length=40, max_sequences_per_row=4),
    ],
)
def test_each_pair_carries_its_records_key(two_sources, byte_tok, layout):
    batches, _ = run(_cfg(two_sources, **layout), byte_tok)
    seen, padding = _keys_by_prompt(batches)
    epochs = layout["num_epochs"]
    assert sorted(p for p, _ in seen) == sorted(list(EXPECTED) * epochs)
    assert all(key == EXPECTED[p] for p, key in seen), seen
    assert padding and set(padding) == {0}


def test_keys_do_not_depend_on_processes_or_shuffle_seed(two_sources, byte_tok):
    one, _ = _keys_by_prompt(run(_cfg(two_sources, num_epochs=1), byte_tok)[0])
    other_seed, _ = _keys_by_prompt(run(_cfg(two_sources, num_epochs=1, seed=9), byte_tok)[0])
    hosts = []
    for process_index in range(2):
        batches, _ = run(_cfg(two_sources, num_epochs=1), byte_tok, process_index, 2)
        hosts += _keys_by_prompt(batches)[0]
    assert dict(one) == dict(other_seed) == dict(hosts) == EXPECTED


@pytest.mark.slow
def test_keys_do_not_depend_on_worker_processes(two_sources, byte_tok):
    batches, _ = run(_cfg(two_sources, num_epochs=1, worker_count=2), byte_tok)
    seen, _ = _keys_by_prompt(batches)
    assert dict(seen) == EXPECTED and len(seen) == len(EXPECTED)
