"""alignjax.commands.plot: panels, points and the PNG drawn from a synthetic metrics.jsonl."""

import json
import math
import struct
import zlib

import numpy as np
import pytest

from alignjax.commands import plot

STEPS = 40
EVAL_EVERY = 10


def write_run(run_dir, extra_lines=()):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, STEPS + 1):
        lines.append(
            {
                "step": step,
                "loss": math.log(2) * math.exp(-step / 20),
                "rewards/accuracies": 0.5 + step / 100,
                "rewards/margins": step / 10,
                "rewards/chosen": step / 20,
                "rewards/rejected": -step / 20,
                "grad_norm": 1.0 if step != 7 else None,  # a NaN, as the writer stores it
                "lr": 1e-6 * min(1.0, step / 10),
                "tokens_per_sec": 1000.0 + step,
                "rewards/accuracies/alice": 0.4 + step / 100,
                "rewards/accuracies/bob": 0.6 + step / 100,
                "logps/chosen": -50.0 + step,
            }
        )
        if step % EVAL_EVERY == 0:
            lines.append(
                {"step": step, "eval/loss": 0.7, "eval/rewards/accuracies": 0.6, "eval/rewards/chosen": 0.1}
            )
    text = "".join(json.dumps(line) + "\n" for line in lines) + "".join(extra_lines)
    (run_dir / "metrics.jsonl").write_text(text)


def png_size(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, chunk_type = struct.unpack(">I4s", data[8:16])
    assert chunk_type == b"IHDR" and length == 13
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(data[12:29])
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_panels_group_metric_families_in_a_fixed_order():
    keys = [
        "step", "kl/chosen", "loss/user", "tokens_per_s", "eval/rewards/accuracies", "learning_rate",
        "rewards/accuracies/bob", "grad_norm", "rewards/rejected", "loss", "rewards/chosen", "kl",
        "rewards/margins", "rewards/accuracies", "eval/loss", "eval/rewards/accuracies/bob", "logps/chosen",
    ]  # fmt: skip
    assert plot.panels_for(keys) == [
        plot.Panel("loss", ("loss", "loss/user", "eval/loss")),
        plot.Panel("rewards/accuracies", ("rewards/accuracies", "eval/rewards/accuracies")),
        plot.Panel("rewards/margins", ("rewards/margins",)),
        plot.Panel("rewards/chosen vs rejected", ("rewards/chosen", "rewards/rejected")),
        plot.Panel("grad_norm", ("grad_norm",)),
        plot.Panel("learning rate", ("learning_rate",)),
        plot.Panel("tokens/s", ("tokens_per_s",)),
        plot.Panel(
            "rewards/accuracies per condition", ("rewards/accuracies/bob", "eval/rewards/accuracies/bob")
        ),
        plot.Panel("kl", ("kl", "kl/chosen")),
        plot.Panel("logps", ("logps/chosen",)),
    ]


def test_plot_run_writes_a_png_with_every_panel_and_point(tmp_path):
    run_dir = tmp_path / "dpo-run"
    write_run(run_dir)
    (path,) = plot.plot_run(run_dir)
    assert path == str(run_dir / "plots" / "curves.png")
    width, height = png_size(path)
    assert 1200 <= width <= 2400 and 900 <= height <= 2400  # 3 columns x 3 rows at 110 dpi

    fig = plot.draw(plot.load_metrics(run_dir / "metrics.jsonl"))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "loss", "rewards/accuracies", "rewards/margins", "rewards/chosen vs rejected", "grad_norm",
        "learning rate", "tokens/s", "rewards/accuracies per condition", "logps",
    ]  # fmt: skip
    axes = dict(zip(titles, fig.axes))
    loss = lines_by_label(axes["loss"])
    np.testing.assert_array_equal(loss["loss"].get_xdata(), np.arange(1, STEPS + 1))
    np.testing.assert_array_equal(loss["eval/loss"].get_xdata(), [10, 20, 30, 40])
    np.testing.assert_allclose(loss["eval/loss"].get_ydata(), 0.7)
    # Eval is drawn in its train curve's colour.
    assert loss["eval/loss"].get_color() == loss["loss"].get_color()
    assert set(lines_by_label(axes["rewards/chosen vs rejected"])) == {
        "rewards/chosen", "rewards/rejected", "eval/rewards/chosen",
    }  # fmt: skip
    per_condition = lines_by_label(axes["rewards/accuracies per condition"])
    assert set(per_condition) == {"alice", "bob"}
    np.testing.assert_allclose(per_condition["bob"].get_ydata(), 0.6 + np.arange(1, STEPS + 1) / 100)
    (grad_norm,) = axes["grad_norm"].get_lines()
    assert len(grad_norm.get_ydata()) == STEPS and np.isnan(grad_norm.get_ydata()[6])


def test_smoothing_is_a_debiased_moving_average_that_skips_gaps():
    values = np.array([1.0, np.nan, 3.0, 5.0])
    w = 0.5
    # By hand: EMA 0.5, then 0.5*0.5 + 0.5*3 = 1.75, then 0.875 + 2.5 = 3.375, divided by
    # the weight mass 0.5, 0.75, 0.875.
    np.testing.assert_allclose(plot.smooth(values, w), [1.0, np.nan, 1.75 / 0.75, 3.375 / 0.875])
    np.testing.assert_array_equal(plot.smooth(values, 0.0), values)


def test_smoothed_plot_keeps_raw_curve_and_leaves_the_schedule_alone(tmp_path):
    write_run(tmp_path)
    fig = plot.draw(plot.load_metrics(tmp_path / "metrics.jsonl"), smoothing=0.6)
    axes = {ax.get_title(): ax for ax in fig.axes}
    raw, smoothed = axes["tokens/s"].get_lines()
    np.testing.assert_allclose(raw.get_ydata(), 1000.0 + np.arange(1, STEPS + 1))
    np.testing.assert_allclose(smoothed.get_ydata(), plot.smooth(raw.get_ydata(), 0.6))
    (lr,) = axes["learning rate"].get_lines()
    np.testing.assert_allclose(lr.get_ydata(), 1e-6 * np.minimum(1.0, np.arange(1, STEPS + 1) / 10))


def test_restarted_run_later_record_wins_and_partial_last_line_is_ignored(tmp_path):
    write_run(tmp_path, extra_lines=['{"step": 5, "loss": 9.0}\n', '{"step": 41, "lo'])
    records = plot.load_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[4]["loss"] == 9.0 and records[4]["rewards/margins"] == 0.5


def test_missing_and_empty_metrics_are_errors_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError, match=r"nothing-here/metrics\.jsonl does not exist"):
        plot.plot_run(missing)
    assert plot.main([str(missing)]) == 2
    assert "nothing-here/metrics.jsonl does not exist" in capsys.readouterr().err

    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"metrics\.jsonl has no metrics records"):
        plot.plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a metrics record"):
        plot.plot_run(tmp_path)


def test_main_writes_to_out(tmp_path, capsys):
    write_run(tmp_path / "run")
    out = tmp_path / "elsewhere" / "c.png"
    assert plot.main([str(tmp_path / "run"), "--out", str(out), "--smoothing", "0.3"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert png_size(out)[0] > 0
    assert not (tmp_path / "run" / "plots").exists()
