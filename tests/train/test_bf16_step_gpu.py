"""A bf16 DPO training step on an NVIDIA GPU, cuDNN attention over packed rows, against the
float32 XLA step on the same batches."""

import json
import math

import jax
import pytest
import train_helpers as th
import yaml

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")

STEPS = 3


def train(tmp_path, name: str, dtype: str, backend: str) -> list[dict]:
    """The metrics records of STEPS DPO steps on packed rows of the tiny model."""
    from alignjax.train.config import load_config
    from alignjax.train.loop import run

    tree = th.tiny_config(str(tmp_path / name))
    tree["stages"] = None
    tree["model"].update(dtype=dtype, attention_backend=backend)
    tree["data"].update(eval=None, packing=True, check=False)
    tree["train"].update(steps=STEPS, log_every=1, save_every=1000)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert run(load_config(str(path)))["step"] == STEPS
    with open(tmp_path / name / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def test_bf16_cudnn_step_matches_float32_xla(tmp_path):
    bf16 = train(tmp_path, "bf16", "bfloat16", "cudnn")
    f32 = train(tmp_path, "f32", "float32", "xla")
    assert len(bf16) == len(f32) == STEPS
    # The reference is the starting policy: the first DPO loss is ln 2 in any precision.
    assert bf16[0]["loss"] == pytest.approx(math.log(2), abs=2e-3)
    for ours, ref in zip(bf16, f32):
        assert math.isfinite(ours["loss"]) and math.isfinite(ours["grad_norm"])
        assert ours["loss"] == pytest.approx(ref["loss"], abs=2e-2)
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=5e-2)
