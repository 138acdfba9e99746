"""MetricsWriter and ProgressBar: the files they leave behind, read back independently."""

import glob
import io
import json
import math
import os
import struct
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.train.metrics import MetricsWriter, ProgressBar


def read_jsonl(path):
    # parse_constant rejects NaN/Infinity literals: the file must be strict JSON.
    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    with open(path) as f:
        return [json.loads(line, parse_constant=reject) for line in f]


def _crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path):
    """Events of one TensorBoard event file, checking the TFRecord framing and checksums."""
    from tensorboardX.proto import event_pb2

    with open(path, "rb") as f:
        data = f.read()
    events, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert header_crc == _masked(_crc32c(header))
        payload = data[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert payload_crc == _masked(_crc32c(payload))
        events.append(event_pb2.Event.FromString(payload))
        offset += 16 + length
    return events


def scalars(events):
    return [(v.tag, e.step, v.simple_value) for e in events for v in e.summary.value]


def test_jsonl_records_are_exact_with_eval_prefix(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        record = writer.write(1, {"loss": 0.693, "rewards/accuracies": 0.5})
        writer.write(2, {"loss": 0.5, "tokens_per_sec": 1200})
        writer.write(2, {"rewards/accuracies": 0.75, "loss": 0.55}, prefix="eval/")
    assert record == {"step": 1, "loss": 0.693, "rewards/accuracies": 0.5}
    assert (tmp_path / "metrics.jsonl").read_text() == (
        '{"step": 1, "loss": 0.693, "rewards/accuracies": 0.5}\n'
        '{"step": 2, "loss": 0.5, "tokens_per_sec": 1200}\n'
        '{"step": 2, "eval/rewards/accuracies": 0.75, "eval/loss": 0.55}\n'
    )


def test_numpy_and_jax_scalars_become_python_numbers_and_nonfinite_becomes_null(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(
            np.int64(7),
            {
                "loss": jnp.float32(0.25),
                "grad_norm": np.float64(1.5),
                "tokens": np.int32(4096),
                "one_element": jnp.array([2.0]),
                "nan": float("nan"),
                "inf": jnp.float32(np.inf),
                "flag": np.bool_(True),
            },
        )
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert record == {
        "step": 7,
        "loss": 0.25,
        "grad_norm": 1.5,
        "tokens": 4096,
        "one_element": 2.0,
        "nan": None,
        "inf": None,
        "flag": 1,
    }
    assert type(record["tokens"]) is int and type(record["loss"]) is float


class _MultiHostArray:
    """Duck-types a jax.Array whose devices span several hosts (not buildable on one CPU)."""

    is_fully_addressable = False

    def __init__(self, local_value, replicated):
        self.sharding = types.SimpleNamespace(is_fully_replicated=replicated)
        self._local = jnp.asarray(local_value)

    def addressable_data(self, index):
        assert index == 0
        return self._local

    def __array__(self, *args, **kwargs):
        raise RuntimeError("Fetching value for jax.Array that spans non-addressable devices is not possible")


def test_replicated_multi_host_scalar_is_read_from_the_local_copy(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        assert writer.write(1, {"loss": _MultiHostArray(0.5, replicated=True)})["loss"] == 0.5
        with pytest.raises(TypeError, match="'loss' is sharded across hosts"):
            writer.write(2, {"loss": _MultiHostArray(0.5, replicated=False)})


def test_non_scalar_metric_names_the_key(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(TypeError, match=r"'eval/rewards/chosen'.*shape \(3,\)"):
            writer.write(1, {"rewards/chosen": np.zeros(3)}, prefix="eval/")
        with pytest.raises(ValueError, match="'step'"):
            writer.write(1, {"step": 3})


def test_truncate_after_drops_later_steps_so_a_resumed_run_has_no_duplicates(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for step in range(1, 6):
            writer.write(step, {"loss": 1.0 / step})
        writer.write(4, {"loss": 0.3}, prefix="eval/")
    # A crash in the middle of a write leaves a cut-off last line.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')

    with MetricsWriter(tmp_path, tensorboard=False) as resumed:
        assert resumed.truncate_after(3) == 4  # steps 4, 5, eval 4 and the partial line
        resumed.write(4, {"loss": 0.2})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 0.5},
        {"step": 3, "loss": 1.0 / 3},
        {"step": 4, "loss": 0.2},
    ]
    assert [name for name in os.listdir(tmp_path) if ".tmp" in name] == []


def test_truncate_after_refuses_a_broken_line_in_the_middle(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a metrics record"):
            writer.truncate_after(1)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\nnot json\n{"step": 2}\n'


def test_tensorboard_events_hold_the_written_scalars(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 0.75, "lr": 1e-6})
        writer.write(2, {"loss": 0.5})
        writer.write(2, {"rewards/accuracies": 0.625}, prefix="eval/")
    (event_file,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    # 0.75, 0.5 and 0.625 are exact in float32; lr is stored as float32.
    got = scalars(read_events(event_file))
    assert got[:1] + got[2:] == [("loss", 1, 0.75), ("loss", 2, 0.5), ("eval/rewards/accuracies", 2, 0.625)]
    assert got[1][:2] == ("lr", 1) and got[1][2] == pytest.approx(1e-6, rel=1e-7)


def test_tensorboard_after_truncate_marks_the_purge_step(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step in range(1, 5):
            writer.write(step, {"loss": float(step)})
    (first_file,) = glob.glob(str(tmp_path / "tb" / "*"))
    with MetricsWriter(tmp_path) as resumed:
        resumed.truncate_after(2)
        resumed.write(3, {"loss": 30.0})
    (second_file,) = set(glob.glob(str(tmp_path / "tb" / "*"))) - {first_file}
    # The old file is kept whole (TensorBoard does the hiding), even when reopened within a second.
    assert scalars(read_events(first_file)) == [("loss", step, float(step)) for step in range(1, 5)]
    events = read_events(second_file)
    # TensorBoard hides steps >= a SessionLog.START's step from older files.
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [3]
    assert scalars(events) == [("loss", 3, 30.0)]


def test_non_primary_process_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with MetricsWriter(run_dir, is_primary=False, wandb={"project": "p"}) as writer:
        assert writer.write(1, {"loss": 0.5}) == {"step": 1, "loss": 0.5}
        assert writer.truncate_after(0) == 0
    assert not run_dir.exists()


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(ImportError, match=r"`wandb` package is not installed: pip install wandb"):
        MetricsWriter(tmp_path, tensorboard=False, wandb={"project": "alignjax"})


def test_tensorboardx_missing_is_a_clear_error_at_construction(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install tensorboardX, or turn TensorBoard off"):
        MetricsWriter(tmp_path)
    MetricsWriter(tmp_path, tensorboard=False).close()  # the switch named in the message works


def test_wandb_gets_the_same_values_at_the_same_steps(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with MetricsWriter(tmp_path, tensorboard=False, wandb={"project": "alignjax", "name": "r1"}) as writer:
        writer.write(5, {"loss": np.float32(0.5), "bad": math.inf}, prefix="eval/")
    assert calls == [
        ("init", {"dir": str(tmp_path), "project": "alignjax", "name": "r1"}),
        ("log", {"eval/loss": 0.5, "eval/bad": math.inf}, 5),
        ("finish",),
    ]


def test_progress_bar_shows_step_loss_accuracy_and_throughput():
    out = io.StringIO()
    bar = ProgressBar(10, enabled=True, file=out)
    bar.update(3, {"loss": jnp.float32(0.6931), "rewards/accuracies": 0.75, "tokens_per_sec": 12345.6})
    bar.close()
    text = out.getvalue()
    assert "3/10" in text
    assert "loss=0.6931" in text and "acc=0.750" in text and "tok/s=12,346" in text


def test_progress_bar_is_silent_off_a_terminal_and_off_the_primary():
    not_a_tty = io.StringIO()
    bar = ProgressBar(10, file=not_a_tty)
    bar.update(5, {"loss": 0.5})
    bar.close()
    forced_but_not_primary = io.StringIO()
    other = ProgressBar(10, enabled=True, is_primary=False, file=forced_but_not_primary)
    other.update(5, {"loss": 0.5})
    other.close()
    assert not bar.enabled and not other.enabled
    assert not_a_tty.getvalue() == "" and forced_but_not_primary.getvalue() == ""


def test_without_a_terminal_the_primary_logs_a_line_per_update_with_eta(caplog, monkeypatch):
    other = ProgressBar(100, file=io.StringIO(), is_primary=False)
    clock = iter([100.0, 110.0, 130.0, 150.0])  # construction, then one reading per update
    monkeypatch.setattr("alignjax.train.metrics.time.perf_counter", lambda: next(clock))
    not_a_tty = io.StringIO()
    bar = ProgressBar(100, file=not_a_tty)
    with caplog.at_level("INFO", logger="alignjax.train"):
        bar.update(10, {"loss": 0.6931, "rewards/accuracies": 0.5, "tokens_per_sec": 1000.0})
        bar.update(20, {"loss": 0.6, "rewards/accuracies": 0.75, "tokens_per_sec": 2000.0})
        bar.update(30, {"loss": 0.5})
        other.update(10, {"loss": 0.1})
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    # ETA from the first update on (compilation excluded): 10 steps per 20 s.
    assert lines == [
        "step 10/100, loss 0.6931, acc 0.500, tok/s 1,000",
        "step 20/100, loss 0.6000, acc 0.750, tok/s 2,000, eta 2m40s",
        "step 30/100, loss 0.5000, eta 2m20s",
    ]
    assert not_a_tty.getvalue() == ""
