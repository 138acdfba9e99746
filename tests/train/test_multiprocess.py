"""Two local processes joined by jax.distributed (gloo on CPU) train like one process."""

import json
import signal
import time

import jax
import numpy as np
import portpicker
import pytest

import train_helpers as th
from alignjax.core import paths, sharding
from alignjax.data.config import DataConfig, SourceConfig, TemplateConfig
from alignjax.data.pipeline import make_pipeline


@pytest.mark.slow
def test_two_processes_match_one_process(reference_run, log_path, compile_cache, tmp_path, gcs):
    """Each process reads its own shard of the shuffled data ([process_index::2]) and
    numbers its pairs from 0; the global batch must still be the one-process batch.
    The run directory is in a bucket, as on a pod (run_dir=gs://...): both processes write
    their checkpoint shards there and Orbax commits each step with its marker file. (Two
    processes sharing a local run directory: test_shared_run_dir.py, test_resume_resize.py.)"""
    run_dir = f"{gcs}/two-processes-{tmp_path.name}"
    config = th.write_config(str(tmp_path / "bucket.yaml"), run_dir)
    port = portpicker.pick_unused_port()
    procs = [
        th.start(
            config,
            devices=1,
            cache_dir=compile_cache,
            log_path=log_path(f"process{i}"),
            env={
                "ALIGNJAX_COORDINATOR": f"127.0.0.1:{port}",
                "ALIGNJAX_NUM_PROCESSES": "2",
                "ALIGNJAX_PROCESS_ID": str(i),
                "PYTHONFAULTHANDLER": "1",  # SIGABRT below prints every thread's stack
            },
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
        time.sleep(0.2)
    hung = [i for i, proc in enumerate(procs) if proc.poll() is None]
    for i in hung:
        procs[i].send_signal(signal.SIGABRT)
        procs[i].wait(timeout=30)
    assert not hung, "processes %s hung (stacks at the end):\n%s" % (
        hung,
        "\n".join(th.log_text(procs[i])[-8000:] for i in hung),
    )
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {i} exited {proc.returncode}:\n{th.log_text(proc)[-5000:]}"

    # Only process 0 writes metrics (a step logged twice fails); eval's per-pair margins live
    # on both processes and are gathered before aggregating.
    step = th.assert_run_matches(run_dir, reference_run, 1e-4, "2 processes vs 1 process")

    # Parameters really were split over the two processes' devices.
    specs = th.saved_specs(paths.join(run_dir, "checkpoints", str(step), "params"))
    assert {str(mesh) for mesh, _ in specs.values()} == {
        str({"data": 1, "fsdp": 2, "sequence": 1, "tensor": 1})
    }
    assert specs["['decoder']['layers_0']['gate']['kernel']"][1][0] == "fsdp"
    # One data-iterator state per process, so each resumes its own shard.
    loop = paths.join(run_dir, "checkpoints", str(step), "loop", "metadata")
    with paths.open(loop) as f:
        data_states = json.load(f)["data_state"]
    assert len(data_states) == 2 and data_states[0] != data_states[1]


def test_process_shards_of_shuffled_data_together_are_the_one_process_batches(tmp_path):
    """The global batch of two processes is the same set of records as one process's batch."""
    from alignjax.data.byte_tokenizer import make_byte_tokenizer
    from alignjax.tasks.conditioned_style import write_task

    paths = write_task(str(tmp_path), n_train=64, n_eval=8, seed=3)
    cfg = DataConfig(
        sources=[SourceConfig(path=paths["train"])],
        batch_size=8,
        max_length=128,
        max_prompt_length=64,
        shuffle=True,
        seed=5,
        num_epochs=None,
        condition_field="condition",
        templates=TemplateConfig(user_info="{user_info}\n{prompt}"),
    )
    tokenizer = make_byte_tokenizer()

    def sequences(batch):
        """The (chosen, rejected) token sequences of every pair of a padded batch."""
        p = batch.num_pairs
        rows = [
            tuple(int(t) for t, s in zip(tok, seg) if s > 0)
            for tok, seg in zip(batch.tokens_BxL, batch.segment_ids_BxL)
        ]
        return sorted(zip(rows[:p], rows[p:]))

    one = make_pipeline(cfg, tokenizer, process_index=0, process_count=1)
    shards = [make_pipeline(cfg, tokenizer, process_index=i, process_count=2) for i in range(2)]
    for _ in range(10):  # more than one epoch of 64 records
        expected = sequences(next(one))
        got = sorted(sum((sequences(next(shard)) for shard in shards), []))
        assert got == expected
    for pipeline in (one, *shards):
        pipeline.close()


def test_row_regrouping_restores_the_chosen_then_rejected_layout():
    """Two processes' padded pair batches, concatenated as make_array_from_process_local_data
    does, are regrouped into rows [0, P) chosen and [P, 2P) rejected."""
    from alignjax.train.multihost import _regroup_rows

    mesh = jax.sharding.Mesh(
        np.asarray(jax.devices()[:1]).reshape((1,) * len(sharding.MESH_AXES)), sharding.MESH_AXES
    )
    # Process q holds 3 pairs: rows "q c i" then "q r i"; values encode (process, half, pair).
    local = [np.array([[100 * q + 10 * half + i] for half in (0, 1) for i in range(3)]) for q in (0, 1)]
    rows = np.concatenate(local)
    out = np.asarray(_regroup_rows({"tokens_BxL": rows}, 2, mesh)["tokens_BxL"])
    expected = [[100 * q + 10 * half + i] for half in (0, 1) for q in (0, 1) for i in range(3)]
    np.testing.assert_array_equal(out, expected)
