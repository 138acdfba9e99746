"""Datasets by Hub name (`data.train: hf:ORG/NAME`), against the Hub server on 127.0.0.1."""

import json
import os
import pickle
import signal

import numpy as np
import pytest
import yaml
from hub_helpers import losses, run_config, train, upload

from alignjax.data.byte_tokenizer import make_byte_tokenizer
from alignjax.data.config import DataConfig, SourceConfig
from alignjax.data.formats import decode
from alignjax.data.pipeline import make_pipeline
from alignjax.data.records import DataError
from alignjax.data.sources import open_sources
from alignjax.data.stream_order import open_stream_order


@pytest.fixture
def prefs(hub, tmp_path):
    """org/prefs: 12 pairs as train.jsonl and 5 as test.jsonl, the local file beside it."""
    from trl_harness import random_pairs

    folder = tmp_path / "prefs"
    (folder / "data").mkdir(parents=True)
    rows = random_pairs(17, seed=3)
    for split, part in (("train", rows[:12]), ("test", rows[12:])):
        with open(folder / "data" / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    commit = upload(str(folder), "org/prefs", repo_type="dataset")
    return str(folder / "data" / "train.jsonl"), rows, commit


def test_a_hub_dataset_reads_as_its_local_file_with_names_in_errors(prefs, tmp_path):
    _, rows, commit = prefs
    (source,) = open_sources(SourceConfig(path="hf:org/prefs"), "data.train[0]")
    assert len(source) == 12 and source.commit == commit
    assert [decode(source[i]) for i in range(12)] == rows[:12]
    assert str(source[3].origin) == "hf:org/prefs[train]:3"
    copy = pickle.loads(pickle.dumps(source))  # a worker process's copy reads the same rows
    assert decode(copy[11]) == rows[11]

    (test,) = open_sources(SourceConfig(hub="org/prefs", split="test"), "data.eval[0]")
    assert [decode(test[i]) for i in range(len(test))] == rows[12:]

    with pytest.raises(DataError) as e:
        open_sources(SourceConfig(path="hf:org/prefs", split="validation"), "data.train[0]")
    assert str(e.value).startswith("data.train[0].split: hf:org/prefs[validation]: Unknown split")
    assert "train" in str(e.value) and "test" in str(e.value)

    with pytest.raises(ValueError) as e:
        open_sources(SourceConfig(path="hf:org/no-such-set"), "data.train[0]")
    assert str(e.value).startswith("data.train[0].path: dataset org/no-such-set: the Hub")


def test_a_missing_split_stops_a_run_before_its_model_loads(prefs, tmp_path, capsys):
    tree = run_config(tmp_path / "run", {"hf_path": "org/no-such-model"}, "hf:org/prefs")
    tree["data"]["eval"] = {"named": {"hub": "org/prefs", "split": "validation"}}
    assert train(tree) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        "alignjax train: error: data.eval.named[0].split: hf:org/prefs[validation]: Unknown split"
    )


def test_columns_map_other_names_onto_the_record_keys(hub, prefs, tmp_path):
    local, rows, _ = prefs
    folder = tmp_path / "renamed"
    folder.mkdir()
    with open(folder / "train.jsonl", "w") as f:
        f.writelines(
            json.dumps({"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]}) + "\n"
            for r in rows[:12]
        )
    upload(str(folder), "org/renamed", repo_type="dataset")
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}

    (source,) = open_sources(SourceConfig(hub="org/renamed", columns=columns), "data.train[0]")
    assert [decode(source[i]) for i in range(12)] == rows[:12]
    with pytest.raises(DataError) as e:
        open_sources(SourceConfig(hub="org/renamed", columns={"chosen": "better"}), "data.train[0]")
    assert str(e.value).startswith("data.train[0].columns: hf:org/renamed[train] has no column 'better'")

    model = {"hf_path": _tiny(tmp_path)}
    assert train(run_config(tmp_path / "local", model, local, data={"eval": local})) == 0
    source = {"hub": "org/renamed", "columns": columns}  # data.eval: one mapping, one set
    assert train(run_config(tmp_path / "hub", model, [source], data={"eval": source})) == 0
    expected = losses(tmp_path / "local")
    assert sorted(expected) == [1, 2]
    np.testing.assert_allclose(
        list(losses(tmp_path / "hub").values()), list(expected.values()), rtol=0, atol=1e-6
    )
    evals = [_final_eval(tmp_path / name) for name in ("local", "hub")]
    assert "eval/loss" in evals[0] and evals[1] == pytest.approx(evals[0], abs=1e-6)


@pytest.fixture
def stream_set(hub):
    """org/stream: 12 pairs in two data files (5 + 7), which `datasets` streams file by file."""
    from trl_harness import random_pairs

    rows = [dict(r, prompt=f"q{i} {r['prompt']}") for i, r in enumerate(random_pairs(12, seed=5))]
    files = {
        f"data/train-{i}.jsonl": "".join(json.dumps(r) + "\n" for r in part).encode()
        for i, part in enumerate((rows[:5], rows[5:]))
    }
    commit = hub.put("org/stream", files, repo_type="dataset")
    return rows, commit


def _stream_cfg(streaming=True, **data):
    source = (
        {"hub": "org/stream", "streaming": True, "shuffle_window": 5} if streaming else {"hub": "org/stream"}
    )
    return DataConfig(
        sources=[source], max_length=96, max_prompt_length=64, batch_size=2, buckets=[96], seed=1, **data
    )


def _batches(pipeline, n=None):
    batches = pipeline if n is None else (next(pipeline) for _ in range(n))
    return [(b.tokens_BxL.tolist(), b.loss_mask_BxL.tolist()) for b in batches]


def test_a_streaming_hub_dataset_gives_the_batches_of_the_downloaded_one(stream_set):
    rows, commit = stream_set
    tok = make_byte_tokenizer()
    # Unshuffled, both orders are the files' order: the same records in the same batches.
    got = [_batches(make_pipeline(_stream_cfg(s, shuffle=False, num_epochs=2), tok)) for s in (True, False)]
    assert len(got[0]) == 12 and got[0] == got[1]  # two epochs of 12 records, 2 per batch

    # What reads by index (the data check, the data fingerprint) reads the stream's first records.
    (prefix,) = open_sources(SourceConfig(hub="org/stream", streaming=True, check_records=7), "data.train[0]")
    assert len(prefix) == 7 and [decode(prefix[i]) for i in range(7)] == rows[:7]
    assert str(prefix[6].origin) == "hf:org/stream[train]:6"
    with open(prefix.path) as f:
        assert json.load(f)["commit"] == commit


def _read(order, n):
    it = iter(order)
    return [(g, str(r.origin), r.epoch, decode(r)) for g, r in (next(it) for _ in range(n))]


def test_a_stream_is_window_shuffled_sharded_by_position_and_resumes_exactly(stream_set):
    rows, _ = stream_set
    order = open_stream_order(_stream_cfg(shuffle=True, num_epochs=None))
    whole = _read(order.lane(0, 1), 36)  # three epochs
    assert [g for g, *_ in whole] == list(range(36))
    assert [e for _, _, e, _ in whole] == [0] * 12 + [1] * 12 + [2] * 12
    row_of = [int(name.rsplit(":", 1)[1]) for _, name, _, _ in whole]
    assert all(decode_row == rows[r] for (_, _, _, decode_row), r in zip(whole, row_of))
    for epoch in range(3):  # each window of 5 (the last of an epoch: 2) is a permutation of its rows
        rows_e = row_of[12 * epoch : 12 * epoch + 12]
        assert [sorted(rows_e[a:b]) for a, b in ((0, 5), (5, 10), (10, 12))] == [
            [0, 1, 2, 3, 4],
            [5, 6, 7, 8, 9],
            [10, 11],
        ]
    assert row_of[:12] != list(range(12)) and row_of[:12] != row_of[12:24]  # shuffled, afresh per epoch
    assert _read(open_stream_order(_stream_cfg(shuffle=True, num_epochs=None)).lane(0, 1), 36) == whole

    # Process p of 2 reads positions p, p + 2, ...: disjoint shares of the one order.
    shares = [_read(order.lane(p, 2), 18) for p in range(2)]
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]
    worker = order.lane(1, 2)
    worker.set_slice(slice(1, None, 3))  # a data worker's slice of process 1's lane
    assert _read(worker, 5) == whole[3::6][:5]

    # Resume: a state recorded mid-window, loaded into a fresh iterator, continues exactly.
    it = iter(order.lane(1, 2))
    head = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(it.get_state()))
    resumed = iter(order.lane(1, 2))
    resumed.set_state(state)
    rest = [(g, str(r.origin), r.epoch, decode(r)) for g, r in (next(resumed) for _ in range(10))]
    assert [g for g, _ in head] == [1, 3, 5, 7] and rest == shares[1][4:14]
    with pytest.raises(ValueError, match="revision"):
        resumed.set_state({**state, "commit": "0" * 40})


def test_a_streaming_pipeline_resumes_exactly_from_its_state(stream_set):
    tok = make_byte_tokenizer()
    cfg = _stream_cfg(shuffle=True, num_epochs=None)
    straight = _batches(make_pipeline(cfg, tok), 10)  # 20 records: across an epoch's end
    first = make_pipeline(cfg, tok)
    assert _batches(first, 3) == straight[:3]
    state = json.loads(json.dumps(first.get_state()))
    resumed = make_pipeline(cfg, tok)
    resumed.set_state(state)
    assert _batches(resumed, 7) == straight[3:]


def _final_eval(run_dir) -> dict:
    with open(run_dir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "eval/loss" in r][-1]


def _tiny(tmp_path) -> str:
    from trl_harness import word_model

    return word_model(tmp_path / "tiny")


@pytest.mark.slow
def test_a_hub_dataset_resumes_exactly_after_sigkill(hub, prefs, tmp_path):
    import train_helpers as th

    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
    model = {"hf_path": _tiny(tmp_path)}

    def config(name):
        tree = run_config(tmp_path / name, model, "hf:org/prefs", steps=24)
        tree["train"].update(save_every=4, batch_size=2)
        tree["data"]["shuffle"] = True
        path = str(tmp_path / f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(tree, f)
        return path

    th.run(config("straight"), cache_dir=cache, log_path=str(tmp_path / "straight.log"))
    proc = th.start(config("killed"), cache_dir=cache, log_path=str(tmp_path / "killed.log"))
    th.wait_for_checkpoint(proc, str(tmp_path / "killed"), 4, timeout=240)
    assert proc.poll() is None, f"run ended before it could be killed:\n{th.log_text(proc)[-3000:]}"
    th.kill(proc, signal.SIGKILL)
    killed_at = max(th.finalized_steps(str(tmp_path / "killed")))
    assert 4 <= killed_at < 24
    text = th.run(config("killed"), cache_dir=cache, log_path=str(tmp_path / "resumed.log"))
    assert f"at step {killed_at}" in text, text[-3000:]
    expected = th.losses(str(tmp_path / "straight"))
    assert sorted(expected) == list(range(1, 25))
    th.assert_losses_match(
        th.losses(str(tmp_path / "killed")), expected, range(1, 25), 1e-6, "Hub dataset, killed and resumed"
    )
