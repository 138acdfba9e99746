"""Buckets, packing (golden segment ids / positions / pair map) and the jnp batch ops."""

import jax
import numpy as np
from datatest_helpers import one_batch, run, write_jsonl

from alignjax.data import ops
from alignjax.data.config import DataConfig

BOS, EOS = 257, 258
a, b_, c, d, e, f, g = (ord(x) for x in "abcdefg")

PAIRS = [
    {"prompt": "a", "chosen": "b", "rejected": "c"},
    {"prompt": "d", "chosen": "ef", "rejected": "g"},
]


def test_packing_golden(tmp_path, byte_tok):
    path = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    x = one_batch(
        path,
        byte_tok,
        packing=True,
        max_length=8,
        max_prompt_length=4,
        pack_length=20,
        max_sequences_per_row=4,
    )
    assert x.tokens_BxL.shape == (1, 20)
    assert x.tokens_BxL[0].tolist() == [
        BOS,
        a,
        b_,
        EOS,
        BOS,
        a,
        c,
        EOS,
        BOS,
        d,
        e,
        f,
        EOS,
        BOS,
        d,
        g,
        EOS,
        256,
        256,
        256,
    ]
    assert x.segment_ids_BxL[0].tolist() == [1] * 4 + [2] * 4 + [3] * 5 + [4] * 4 + [0] * 3
    assert x.positions_BxL[0].tolist() == [0, 1, 2, 3] * 2 + [0, 1, 2, 3, 4] + [0, 1, 2, 3] + [0] * 3
    assert x.loss_mask_BxL[0].tolist() == [0, 0, 1, 1] * 2 + [0, 0, 1, 1, 1] + [0, 0, 1, 1] + [0] * 3
    assert x.segment_pair_index_BxS.tolist() == [[0, 0, 1, 1]]
    assert x.segment_is_chosen_BxS.tolist() == [[1, 0, 1, 0]]
    assert x.pair_valid_P.tolist() == [1, 1]


def test_packing_opens_a_new_batch_when_a_pair_does_not_fit(tmp_path, byte_tok):
    path = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    cfg = DataConfig(
        sources=[{"path": path}],
        packing=True,
        max_length=8,
        max_prompt_length=4,
        pack_length=16,
        batch_size=1,
        shuffle=False,
    )
    batches, p = run(cfg, byte_tok)
    # 8 + 9 tokens > 16: one pair per batch; the held-back pair is not lost.
    assert [x.pair_valid_P.tolist() for x in batches] == [[1] + [0] * 7, [1] + [0] * 7]
    assert batches[1].tokens_BxL[0, :5].tolist() == [BOS, d, e, f, EOS]
    assert p.metrics()["data/examples"] == 2


def test_padded_batches_use_smallest_fitting_bucket_and_pad_last_batch(tmp_path, byte_tok):
    rows = [{"prompt": "p", "chosen": "x" * n, "rejected": "y"} for n in (1, 2, 30, 3, 4)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(
        sources=[{"path": path}],
        max_length=64,
        max_prompt_length=8,
        batch_size=2,
        shuffle=False,
        buckets=[8, 16, 64],
    )
    batches, _ = run(cfg, byte_tok)
    assert [x.tokens_BxL.shape for x in batches] == [(4, 8), (4, 64), (4, 8)]
    assert batches[-1].pair_valid_P.tolist() == [1, 0]
    assert batches[-1].segment_ids_BxL[1].sum() == 0 and batches[-1].segment_ids_BxL[3].sum() == 0


def test_default_buckets_are_powers_of_two_up_to_max_length():
    assert DataConfig(max_length=300).effective_buckets == [64, 128, 256, 300]


def _numpy_pair_sums(values, x):
    """Reference: walk every token, look its segment up, add to its pair's sum."""
    P = x.pair_valid_P.shape[0]
    chosen, rejected = np.zeros(P), np.zeros(P)
    for r in range(values.shape[0]):
        for t in range(values.shape[1]):
            s = x.segment_ids_BxL[r, t]
            if s and x.loss_mask_BxL[r, t]:
                pair = x.segment_pair_index_BxS[r, s - 1]
                target = chosen if x.segment_is_chosen_BxS[r, s - 1] else rejected
                target[pair] += values[r, t]
    return chosen, rejected


def test_pair_sums_packed_and_padded_match_reference_under_jit(tmp_path, byte_tok):
    rows = [
        {"prompt": "p" * (i % 3 + 1), "chosen": "x" * (i + 1), "rejected": "y" * (2 * i + 1)}
        for i in range(6)
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    fn = jax.jit(ops.pair_sums)
    results = {}
    for packing in (False, True):
        cfg = DataConfig(
            sources=[{"path": path}],
            max_length=24,
            max_prompt_length=8,
            batch_size=6 if not packing else 2,
            packing=packing,
            shuffle=False,
            buckets=[24],
        )
        batches, _ = run(cfg, byte_tok)
        sums = {}
        for x in batches:
            values = np.random.default_rng(0).normal(size=x.tokens_BxL.shape).astype(np.float32)
            got_c, got_r = fn(values, x)
            ref_c, ref_r = _numpy_pair_sums(values, x)
            np.testing.assert_allclose(got_c, ref_c, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got_r, ref_r, rtol=1e-5, atol=1e-5)
            ones_c, ones_r = fn(np.ones_like(values), x)
            for i in np.flatnonzero(x.pair_valid_P):
                sums[len(sums)] = (float(ones_c[i]), float(ones_r[i]))
        results[packing] = sorted(sums.values())
    # Response lengths (+ EOS) per pair, the same whichever way the batch is laid out.
    expected = sorted((i + 2.0, 2 * i + 2.0) for i in range(6))
    assert results[False] == expected and results[True] == expected


def test_remove_user_slots_gives_the_rows_without_slots(tmp_path, byte_tok):
    rows = [{"prompt": "ab", "chosen": "x" * (i + 1), "rejected": "yz", "user_id": i} for i in range(3)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    for packing in (False, True):
        kw = dict(
            sources=[{"path": path}],
            max_length=16,
            max_prompt_length=8,
            batch_size=3 if not packing else 1,
            packing=packing,
            shuffle=False,
            buckets=[16],
            pack_length=64,
        )
        with_slots, _ = run(DataConfig(n_user_tokens=2, **kw), byte_tok)
        without, _ = run(DataConfig(**kw), byte_tok)
        assert len(with_slots) == len(without) == 1
        stripped = jax.jit(ops.remove_user_slots)(with_slots[0])
        ref = without[0]
        for name in ("tokens_BxL", "positions_BxL", "segment_ids_BxL", "loss_mask_BxL"):
            got = np.asarray(getattr(stripped, name))
            keep = ref.segment_ids_BxL > 0
            np.testing.assert_array_equal(got[keep], getattr(ref, name)[keep], err_msg=name)
            assert (np.asarray(stripped.segment_ids_BxL)[~keep] == 0).all()


def test_example_sums_sft_packed(tmp_path, byte_tok):
    rows = [{"prompt": "p", "response": "x" * (i + 1)} for i in range(5)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(
        sources=[{"path": path}],
        record_type="sft",
        packing=True,
        max_length=16,
        max_prompt_length=8,
        batch_size=1,
        shuffle=False,
        pack_length=32,
        max_sequences_per_row=8,
    )
    batches, _ = run(cfg, byte_tok)
    lengths = []
    for x in batches:
        sums = np.asarray(jax.jit(ops.example_sums)(np.ones(x.tokens_BxL.shape, np.float32), x))
        lengths += sums[x.example_valid_E == 1].tolist()
    assert lengths == [i + 2.0 for i in range(5)]  # response bytes + EOS
