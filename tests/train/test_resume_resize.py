"""A run checkpointed by N processes resumes on M != N processes (jax.distributed, gloo).

The guarantee (README, "Several hosts"): the resumed run carries on from the global position
of the record order that every process had reached, and skips the records some process had
consumed beyond it, so no record is lost or read twice. With padded
batches of a fixed size (this config), every process consumes exactly its share of each
step's records, so the steps after the resume train on the very records the uninterrupted
run trains on, and their losses equal it up to float32 reduction order.

What the processes consumed is checked by replaying the stage's data pipeline here: the
records it yields reproduce the data states the training processes saved, before and after
the resume, and together they are the uninterrupted run's records, each once.
"""

import json
import os
import signal
import time

import portpicker
import pytest

import train_helpers as th
from alignjax.data.byte_tokenizer import make_byte_tokenizer
from alignjax.data.pipeline import make_pipeline
from alignjax.train.config import load_config, stages
from alignjax.train.datasets import stage_data


def _start(config, processes: int, cache, log_path, name):
    if processes == 1:
        return [th.start(config, cache_dir=cache, log_path=log_path(name))]
    port = portpicker.pick_unused_port()
    return [
        th.start(
            config,
            cache_dir=cache,
            log_path=log_path(f"{name}-process{i}"),
            env={
                "ALIGNJAX_COORDINATOR": f"127.0.0.1:{port}",
                "ALIGNJAX_NUM_PROCESSES": str(processes),
                "ALIGNJAX_PROCESS_ID": str(i),
                "PYTHONFAULTHANDLER": "1",
            },
        )
        for i in range(processes)
    ]


def _wait(procs, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    hung = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in hung:
        procs[i].send_signal(signal.SIGABRT)
        procs[i].wait(timeout=30)
    stacks = "\n".join(th.log_text(procs[i])[-8000:] for i in hung)
    assert not hung, f"processes {hung} hung:\n{stacks}"
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {i} exited {proc.returncode}:\n{th.log_text(proc)[-5000:]}"


def _saved_data_states(run_dir, step):
    with open(os.path.join(run_dir, "checkpoints", str(step), "loop", "metadata")) as f:
        return json.load(f)["data_state"]


def _keys(batches):
    return [k for x in batches for k, valid in zip(x.record_key_P.tolist(), x.pair_valid_P) if valid]


def _replay(config, run_dir, before, after, stopped_at, final_states, stopped_states):
    """The DPO stage's records, as its pipelines yield them on `before` processes up to the stop
    and on `after` processes from there; each pipeline's state must be the one training saved."""
    cfg = load_config(config)
    dpo = stages(cfg)[1]
    train = stage_data(dpo, 1, os.path.join(run_dir, "data"), run_dir).train
    tokenizer = make_byte_tokenizer()
    keys = []
    for p in range(before):
        with make_pipeline(train, tokenizer, process_index=p, process_count=before) as pipeline:
            keys += _keys(next(pipeline) for _ in range(stopped_at - th.SFT_STEPS))
            assert pipeline.get_state() == stopped_states[p], f"process {p} of {before} at step {stopped_at}"
    for q in range(after):
        with make_pipeline(train, tokenizer, process_index=q, process_count=after) as pipeline:
            pipeline.resume_from(stopped_states)
            keys += _keys(next(pipeline) for _ in range(th.TOTAL_STEPS - stopped_at))
            assert pipeline.get_state() == final_states[q], f"process {q} of {after} at the end"
    with make_pipeline(train, tokenizer, process_index=0, process_count=1) as pipeline:
        uninterrupted = _keys(next(pipeline) for _ in range(th.DPO_STEPS))
    return keys, uninterrupted


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_a_run_resumes_on_another_number_of_processes(
    reference_run, config_for, log_path, compile_cache, before, after
):
    config, run_dir = config_for(f"from_{before}_to_{after}_processes")
    procs = _start(config, before, compile_cache, log_path, "first")
    th.wait_for_checkpoint(procs[0], run_dir, th.SFT_STEPS + th.SAVE_EVERY, timeout=600)
    assert all(p.poll() is None for p in procs), "the run ended before it could be killed"
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=60)
    stopped_at = max(th.finalized_steps(run_dir))
    assert th.SFT_STEPS < stopped_at < th.TOTAL_STEPS, th.finalized_steps(run_dir)
    stopped_states = _saved_data_states(run_dir, stopped_at)
    assert len(stopped_states) == before

    _wait(_start(config, after, compile_cache, log_path, "resumed"))

    final_states = _saved_data_states(run_dir, th.TOTAL_STEPS)
    assert len(final_states) == after
    keys, uninterrupted = _replay(config, run_dir, before, after, stopped_at, final_states, stopped_states)
    assert sorted(keys) == sorted(uninterrupted)
    assert len(keys) == th.DPO_STEPS * 8  # batch_size 8, no padding pairs: nothing lost

    losses = th.losses(run_dir)
    assert sorted(losses) == list(range(1, th.TOTAL_STEPS + 1))
    what = f"{before} processes resumed on {after} vs the uninterrupted run"
    th.assert_losses_match(losses, reference_run.losses, range(1, th.TOTAL_STEPS + 1), 1e-4, what)
    _, params = th.final_params(run_dir)
    th.assert_trees_close(params, reference_run.final_params, 1e-4, f"final parameters, {what}")
