"""Every source format gives the same batches from the same records; mixing weights."""

import collections
import functools
import json

import numpy as np
import pytest
from datatest_helpers import run, write_jsonl

from alignjax.data.config import DataConfig, SourceConfig
from alignjax.data.formats import decode
from alignjax.data.records import DataError
from alignjax.data.sources import JsonlSource, open_sources, write_array_record

RECORDS = [
    {
        "prompt": f"question {i}",
        "system": "Be brief" if i % 2 else "Be kind",
        "chosen": [{"role": "assistant", "content": "good " * (i % 4 + 1)}],
        "rejected": [{"role": "assistant", "content": f"bad {i}"}],
    }
    for i in range(13)
]


def _cfg(path, fmt="auto", data_dir=None, **data):
    return DataConfig(
        sources=[SourceConfig(path=path, format=fmt, data_dir=data_dir)],
        max_length=96,
        max_prompt_length=64,
        batch_size=4,
        seed=3,
        buckets=[64, 96],
        num_epochs=2,
        **data,
    )


def _flatten(batches):
    return [(x.tokens_BxL.tolist(), x.loss_mask_BxL.tolist(), x.pair_valid_P.tolist()) for x in batches]


def _write_parquet(path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(RECORDS), path, row_group_size=5)
    return path


def _write_hf(path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(RECORDS).save_to_disk(path)
    return path


def _write_array_record(path):
    assert write_array_record(path, RECORDS) == len(RECORDS)
    return path


@pytest.fixture()
def reference(tmp_path, byte_tok):
    """Batches from the JSONL file: what every other format must reproduce."""
    batches = _flatten(run(_cfg(write_jsonl(tmp_path / "d.jsonl", RECORDS)), byte_tok)[0])
    assert sum(sum(v) for _, _, v in batches) == 2 * len(RECORDS)  # 2 epochs, nothing lost
    return batches


@pytest.mark.parametrize(
    "name, writer",
    [
        ("d.parquet", _write_parquet),
        ("hf_dataset", _write_hf),
        ("d.array_record", _write_array_record),
    ],
)
def test_file_formats_yield_identical_batches(tmp_path, byte_tok, reference, name, writer):
    path = writer(str(tmp_path / name))
    assert _flatten(run(_cfg(path), byte_tok)[0]) == reference


@functools.cache
def _tiny_prefs_builder():
    """The TFDS builder of RECORDS (defined once: TFDS registers builders by class name)."""
    import tensorflow_datasets as tfds

    message = tfds.features.FeaturesDict({"role": tfds.features.Text(), "content": tfds.features.Text()})

    class TinyPrefs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "prompt": tfds.features.Text(),
                        "system": tfds.features.Text(),
                        "chosen": tfds.features.Sequence(message),
                        "rejected": tfds.features.Sequence(message),
                    }
                ),
                disable_shuffling=True,  # keep record order = generation order, like the files
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, r in enumerate(RECORDS):
                yield i, r

    return TinyPrefs


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_tfds_source_yields_identical_batches(tmp_path, byte_tok, reference, request, monkeypatch, where):
    # The test extra installs tensorflow-datasets (without TensorFlow: it prepares and reads
    # ArrayRecord datasets itself), so this runs wherever the suite does. In a bucket, the
    # dataset's directory is copied to the local cache and read from there.
    TinyPrefs = _tiny_prefs_builder()
    data_dir = str(tmp_path / "tfds")
    TinyPrefs(data_dir=data_dir, file_format="array_record").download_and_prepare()
    if where == "bucket":
        from gcs_emulator import upload_dir

        monkeypatch.setenv("ALIGNJAX_CACHE", str(tmp_path / "cache"))
        data_dir = upload_dir(data_dir, f"{request.getfixturevalue('gcs')}/tfds-{tmp_path.name}")
    got = _flatten(run(_cfg("tiny_prefs", "tfds", data_dir=data_dir), byte_tok)[0])
    assert got == reference


def test_directory_of_saved_datasets_and_glob(tmp_path, byte_tok):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "many"
    datasets.Dataset.from_list(RECORDS[:6]).save_to_disk(str(root / "part0"))
    datasets.Dataset.from_list(RECORDS[6:]).save_to_disk(str(root / "part1"))
    assert [len(s) for s in open_sources(SourceConfig(path=str(root)), "data.sources[0]")] == [6, 7]
    write_jsonl(tmp_path / "a.jsonl", RECORDS[:4])
    write_jsonl(tmp_path / "b.jsonl", RECORDS[4:])
    assert [len(s) for s in open_sources(SourceConfig(path=str(tmp_path / "*.jsonl")), "k")] == [
        4,
        9,
    ]


def test_jsonl_origin_is_file_and_line_and_blank_lines_hold_no_record(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\n{"a": 2}\n{"a": 3}')  # CRLF, a blank line, no final newline
    src = JsonlSource(str(path))
    assert len(src) == 3
    assert [str(src[i].origin) for i in range(3)] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert [json.loads(src[i].value) for i in range(3)] == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_missing_path_and_unknown_extension_name_the_config_key(tmp_path):
    with pytest.raises(DataError, match=r"data.sources\[0\].path: .* does not exist"):
        open_sources(SourceConfig(path=str(tmp_path / "nope.jsonl")), "data.sources[0]")
    (tmp_path / "d.txt").write_text("{}")
    with pytest.raises(DataError, match=r"data.sources\[1\].format"):
        open_sources(SourceConfig(path=str(tmp_path / "d.txt")), "data.sources[1]")


def _prompts_seen(batches):
    seen = collections.Counter()
    for x in batches:
        P = x.pair_valid_P.shape[0]
        for i in np.flatnonzero(x.pair_valid_P):
            prompt = (x.loss_mask_BxL[i] == 0) & (x.segment_ids_BxL[i] > 0)
            seen[bytes(x.tokens_BxL[i][prompt][1:].astype(np.uint8)).decode()] += 1
        assert x.tokens_BxL.shape[0] == 2 * P
    return seen


def test_mixture_weights_are_per_record_rates(tmp_path, byte_tok):
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [{"prompt": f"a{i}", "chosen": "y", "rejected": "n"} for i in range(10)],
    )
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [{"prompt": f"b{i}", "chosen": "y", "rejected": "n"} for i in range(4)],
    )
    cfg = DataConfig(
        sources=[{"path": a, "weight": 0.5}, {"path": b, "weight": 2.0}],
        max_length=16,
        max_prompt_length=8,
        batch_size=4,
        buckets=[16],
        num_epochs=2,
        seed=1,
    )
    batches, p = run(cfg, byte_tok)
    seen = _prompts_seen(batches)
    assert p.records_per_epoch == 5 + 8
    assert sum(n for k, n in seen.items() if k.startswith("b")) == 16  # each b record twice per epoch
    assert all(seen[f"b{i}"] == 4 for i in range(4))
    assert sum(n for k, n in seen.items() if k.startswith("a")) == 10  # half of a, per epoch
    # The half of `a` is drawn afresh each epoch (seeded), not the same 5 records twice.
    assert len([k for k in seen if k.startswith("a")]) > 5


@pytest.mark.parametrize(
    "name, writer",
    [
        ("d.jsonl", lambda p: str(write_jsonl(p, RECORDS))),
        ("d.parquet", _write_parquet),
        ("hf_dataset", _write_hf),
        ("d.array_record", _write_array_record),
    ],
)
def test_every_file_format_reads_from_a_bucket(tmp_path, byte_tok, reference, gcs, monkeypatch, name, writer):
    """The same file in a bucket (fake-gcs-server on 127.0.0.1) gives the same batches, and its
    records name the URL, not the local cache copy they are read from."""
    from gcs_emulator import upload_dir

    monkeypatch.setenv("ALIGNJAX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "up").mkdir()
    writer(str(tmp_path / "up" / name))
    url = upload_dir(str(tmp_path / "up"), f"{gcs}/sources-{tmp_path.name}") + f"/{name}"
    assert _flatten(run(_cfg(url), byte_tok)[0]) == reference
    (source,) = open_sources(SourceConfig(path=url), "data.sources[0]")
    assert source[0].origin.path == url and url in repr(source)


def test_a_glob_in_a_bucket(tmp_path, gcs):
    from gcs_emulator import upload_dir

    (tmp_path / "up").mkdir()
    write_jsonl(tmp_path / "up" / "a.jsonl", RECORDS[:4])
    write_jsonl(tmp_path / "up" / "b.jsonl", RECORDS[4:])
    url = upload_dir(str(tmp_path / "up"), f"{gcs}/glob-{tmp_path.name}")
    sources = open_sources(SourceConfig(path=f"{url}/*.jsonl"), "k")
    assert [(s.name, len(s)) for s in sources] == [(f"{url}/a.jsonl", 4), (f"{url}/b.jsonl", 9)]
    with pytest.raises(DataError, match="does not exist"):
        open_sources(SourceConfig(path=f"{url}/missing.jsonl"), "k")


RENAMED = [
    {"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "system": r["system"]}
    for r in RECORDS
]
COLUMNS = {"prompt": "question", "chosen": "good", "rejected": "bad"}


def test_data_columns_map_a_local_files_columns_onto_the_record_keys(tmp_path, byte_tok, reference):
    renamed = write_jsonl(tmp_path / "renamed.jsonl", RENAMED)
    assert _flatten(run(_cfg(renamed, columns=COLUMNS), byte_tok)[0]) == reference

    # A source's own columns override data.columns key by key; a mapping swaps at once.
    plain = write_jsonl(tmp_path / "plain.jsonl", RECORDS)
    cfg = DataConfig(
        sources=[renamed, {"path": plain, "columns": {k: k for k in COLUMNS}}, {"path": plain}],
        columns=COLUMNS,
    )
    opened = [open_sources(s, f"data.train[{i}]") for i, s in enumerate(cfg.sources[:2])]
    assert [[decode(s[i]) for i in range(len(s))] for (s,) in opened] == [RECORDS, RECORDS]
    (swapped,) = open_sources(
        SourceConfig(path=plain, columns={"chosen": "rejected", "rejected": "chosen"}), "k"
    )
    assert decode(swapped[0])["chosen"] == RECORDS[0]["rejected"] == swapped[0].value["chosen"]
    assert str(swapped[0].origin) == f"{plain}:1"

    # A mapped column that is not there stops the run at once, naming the key that mapped it.
    with pytest.raises(DataError) as e:
        open_sources(cfg.sources[2], "data.train[2]")
    assert str(e.value).startswith(
        f"data.columns: {plain} has no column 'question', 'good', 'bad'; its columns"
    )
    parquet = _write_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError) as e:
        open_sources(SourceConfig(path=parquet, columns={"chosen": "better"}), "data.train[0]")
    assert str(e.value).startswith(f"data.train[0].columns: {parquet} has no column 'better'; its columns")
    # A later record of a JSON file without its column has no value for that key (missing_field).
    write_jsonl(tmp_path / "gap.jsonl", [RENAMED[0], {"question": "q", "chosen": "c", "bad": "b"}])
    (gap,) = open_sources(SourceConfig(path=str(tmp_path / "gap.jsonl"), columns=COLUMNS), "k")
    assert decode(gap[1]) == {"prompt": "q", "rejected": "b"}


def test_a_streaming_source_must_be_a_hub_dataset_read_alone(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    for sources, message in [
        ([{"path": path, "streaming": True}], r"data.sources\[0\].streaming: .* only a Hub dataset"),
        ([{"hub": "org/a", "streaming": True}, path], r"data.sources\[0\].streaming: .* the only source"),
        ([{"hub": "org/a", "streaming": True, "weight": 2.0}], r"data.sources\[0\].weight"),
        (
            [{"path": path, "shuffle_window": 8}],
            r"data.sources\[0\].shuffle_window: .* streaming source only",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            DataConfig(sources=sources).validate()
    with pytest.raises(ValueError, match=r"data.condition_field: reads every record up front"):
        DataConfig(sources=[{"hub": "org/a", "streaming": True}], condition_field="system").validate()


@pytest.mark.parametrize(
    "mapping, error",
    [
        ({"columns": ["chosen"]}, r"data\.train\[0\]\.columns: \['chosen'\]: use a mapping"),
        (
            {"streaming": True, "check_records": 0},
            r"data\.train\[0\]\.check_records: must be a whole number >= 1",
        ),
    ],
)
def test_a_sources_own_keys_are_checked_before_it_is_opened(mapping, error):
    """A Hub source is fetched before the data section is validated as a whole."""
    from alignjax.data.config import SourceConfig, check_source_mapping

    with pytest.raises(ValueError, match=error):
        check_source_mapping(SourceConfig(path="hf:org/prefs", **mapping), "data.train[0]")
