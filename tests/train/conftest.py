import dataclasses
import os

import pytest

import train_helpers as th


@pytest.fixture(scope="session")
def compile_cache():
    """The session's persistent compilation cache (tests/conftest.py), which training
    subprocesses fill with every program they compile, however fast it compiled."""
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


@dataclasses.dataclass(frozen=True)
class ReferenceRun:
    run_dir: str
    config: str
    losses: dict
    final_step: int
    final_params: object


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, compile_cache) -> ReferenceRun:
    """The uninterrupted SFT -> DPO run on one device that other runs must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    run_dir = str(root / "run")
    config = th.write_config(str(root / "config.yaml"), run_dir)
    th.run(config, devices=1, cache_dir=compile_cache, log_path=str(root / "log.txt"))
    losses = th.losses(run_dir)
    assert sorted(losses) == list(range(1, th.TOTAL_STEPS + 1))
    step, params = th.final_params(run_dir)
    assert step == th.TOTAL_STEPS
    return ReferenceRun(run_dir, config, losses, step, params)


@pytest.fixture
def config_for(tmp_path):
    """A fresh run directory and its config file: `config_for("name") -> (config, run_dir)`."""

    def make(name: str):
        run_dir = str(tmp_path / name)
        return th.write_config(str(tmp_path / f"{name}.yaml"), run_dir), run_dir

    return make


@pytest.fixture
def log_path(tmp_path):
    counter = iter(range(1000))
    return lambda name: os.path.join(str(tmp_path), f"{name}-{next(counter)}.log")
