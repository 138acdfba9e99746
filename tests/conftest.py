import os
import sys

import pytest

# The storage emulator (tests/gcs_emulator.py) speaks the JSON API only; gcsfs's lookup of a
# bucket's layout goes to the gRPC control plane, which it has not, and must be off before
# gcsfs is imported.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

# Tests share small helpers (tiny HF model builders) that live next to this file.
sys.path.insert(0, os.path.dirname(__file__))

from gcs_emulator import gcs  # noqa: E402, F401  (the `gcs` fixture: a bucket on 127.0.0.1, for every test)


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up its factory
def pytest_configure(config):
    """One persistent JAX compilation cache for the session: the test processes (xdist's
    workers inherit the controller's environment) and every process a test starts reuse
    each other's compiled programs. CI names one for its whole run; otherwise it lives in
    pytest's base temporary directory, which pytest prunes."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or hasattr(config, "workerinput"):
        return
    cache_dir = config._tmp_path_factory.getbasetemp() / "jax-cache"
    cache_dir.mkdir(exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
