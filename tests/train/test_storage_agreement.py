"""Processes that see shared storage at different moments still enter the same collectives.

Whether a stage's reference was saved decides between a collective save and a collective
restore; if each process read the directory for itself, one could see it before and another
after process 0 created it, and they would meet in different Orbax barriers. Here the two
processes are given different views outright (process 1's root holds a saved reference,
process 0's is empty): both must follow process 0.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import portpicker

from alignjax.train import checkpoint as ckpt_lib

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from alignjax.core import sharding
    sharding.maybe_initialize_distributed()
    import jax
    import jax.numpy as jnp
    from alignjax.train import checkpoint as ckpt_lib
    from alignjax.train.multihost import primary_decides

    roots = json.loads(sys.argv[1])
    root = roots[jax.process_index()]
    mesh = jax.sharding.Mesh(jax.devices(), ("x",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=replicated)}
    seen = primary_decides(jax.process_index() == 1)
    restored = ckpt_lib.restore_reference(root, abstract)
    print(json.dumps({"process": jax.process_index(), "flag": seen, "restored": restored is not None}))
    """
)


def test_processes_follow_process_zero_view_of_the_reference(tmp_path):
    saved = str(tmp_path / "saved")
    ckpt_lib.save_reference(saved, {"w": np.ones(4, np.float32)}, {"note": "test"})
    roots = [str(tmp_path / "empty"), saved]  # process 0 sees nothing, process 1 a reference
    port = portpicker.pick_unused_port()
    procs = []
    for i in range(2):
        env = {
            **os.environ,
            "ALIGNJAX_COORDINATOR": f"127.0.0.1:{port}",
            "ALIGNJAX_NUM_PROCESSES": "2",
            "ALIGNJAX_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT, json.dumps(roots)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError("the processes disagreed and waited on each other") from None
        assert proc.returncode == 0, out[-4000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert outputs == [
        {"process": 0, "flag": False, "restored": False},
        {"process": 1, "flag": False, "restored": False},
    ]
