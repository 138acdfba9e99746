import os
import sys

import pytest

# The storage emulator (tests/gcs_emulator.py) speaks the JSON API only; gcsfs's lookup of a
# bucket's layout goes to the gRPC control plane, which it has not, and must be off before
# gcsfs is imported.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

# Tests share small helpers (tiny HF model builders) that live next to this file.
sys.path.insert(0, os.path.dirname(__file__))

from xla_flags import on_cpu_only, with_fast_compile  # noqa: E402

# Before JAX starts in this process; the processes tests start inherit it (tests/xla_flags.py).
# A machine with an accelerator (the GPU-only tests of launch/device_check.sh) keeps XLA's defaults.
if on_cpu_only():
    os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS", ""))

from gcs_emulator import gcs  # noqa: E402, F401  (the `gcs` fixture: a bucket on 127.0.0.1, for every test)


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up its factory
def pytest_configure(config):
    """Caches shared by the whole session: the test processes (xdist's workers inherit the
    controller's environment) and every process a test starts. One persistent JAX
    compilation cache, so they reuse each other's compiled programs; one directory of data
    check summaries, so a new run directory over data another run already checked does not
    tokenise it all again (`alignjax.train.data_check`). CI may name its own compilation
    cache for its whole run; otherwise both live in pytest's base temporary directory,
    which pytest prunes."""
    # loadscope hands out whole modules in the order `pytest_collection_modifyitems` gives
    # them, not re-sorted by their number of tests.
    config.option.loadscopereorder = False
    if hasattr(config, "workerinput"):
        return
    base = config._tmp_path_factory.getbasetemp()
    for env, name in (
        ("JAX_COMPILATION_CACHE_DIR", "jax-cache"),
        ("ALIGNJAX_DATA_CHECK_CACHE", "data-check"),
    ):
        if not os.environ.get(env):
            (base / name).mkdir(exist_ok=True)
            os.environ[env] = str(base / name)


# The longest modules, longest first (pytest --durations, summed per module). Parallel runs
# (pytest-xdist, --dist loadscope) hand out whole modules in collection order, so a long
# module collected last would run alone at the end; these go first, then every module with
# a slow test, then the rest. Only the order changes: a module missing here still runs.
LONGEST_FIRST = (
    "train/test_sequence_parallel_training.py",
    "online/test_fidelity_reproduction.py",
    "train/test_online_multiprocess.py",
    "train/test_lora.py",
    "train/test_methods.py",
    "train/test_resume_resize.py",
    "train/test_resume.py",
    "models/test_decoder.py",
    "train/test_trl_tokenizers.py",
    "train/test_gcs_storage.py",
    "train/test_multiprocess.py",
    "train/test_compile_check.py",
    "models/test_decode_attention.py",
    "train/test_qlora.py",
    "models/test_quantize.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    tests_dir = os.path.dirname(__file__)

    def rank(item):
        module = os.path.relpath(str(item.path), tests_dir)
        if module in LONGEST_FIRST:
            return LONGEST_FIRST.index(module)
        return len(LONGEST_FIRST) + (0 if slow_modules.get(module) else 1)

    slow_modules = {}
    for item in items:
        module = os.path.relpath(str(item.path), tests_dir)
        slow_modules[module] = slow_modules.get(module, False) or item.get_closest_marker("slow") is not None
    items.sort(key=rank)  # stable: each module's own order is kept
