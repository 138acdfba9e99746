"""QLoRA: adapters trained over an NF4 base with adapter dropout, as real `alignjax train`
processes (the resume tests' SFT -> DPO recipe). A run killed inside DPO ends where the
uninterrupted one does, the checkpoint holds adapters only, and generation and export
see the base as the run did."""

import json
import os
import signal

import pytest
import train_helpers as th

LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.1, "quantize_base": "nf4"}


def _config(root, name):
    return th.write_lora_config(root, name, LORA)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache):
    root = tmp_path_factory.mktemp("qlora")
    config, run_dir = _config(root, "whole")
    th.run(config, cache_dir=compile_cache, log_path=str(root / "whole.log"))
    return run_dir


@pytest.mark.slow
def test_killed_qlora_run_resumes_to_the_same_adapters(uninterrupted, tmp_path, compile_cache, log_path):
    config, run_dir = _config(tmp_path, "killed")
    at_least = th.SFT_STEPS + th.SAVE_EVERY
    proc = th.start(config, cache_dir=compile_cache, log_path=log_path("kill"))
    th.wait_for_checkpoint(proc, run_dir, at_least)
    assert proc.poll() is None, f"run ended before it could be killed:\n{th.log_text(proc)[-3000:]}"
    th.kill(proc, signal.SIGKILL)
    th.run(config, cache_dir=compile_cache, log_path=log_path("last"))
    # Dropout masks come from the step's key, so the resumed steps draw the same ones.
    th.assert_losses_match(
        th.losses(run_dir), th.losses(uninterrupted), range(1, th.TOTAL_STEPS + 1), 1e-6, "resumed QLoRA run"
    )
    _, params = th.final_params(run_dir)
    _, expected = th.final_params(uninterrupted)
    th.assert_trees_close(params, expected, 1e-6, "adapters after a SIGKILL")


@pytest.mark.slow
def test_qlora_checkpoint_names_its_quantized_base_and_loads_and_exports(uninterrupted, tmp_path):
    import jax

    from alignjax.convert import api
    from alignjax.convert import model_checkpoint as mc
    from alignjax.models import quantize
    from alignjax.models.lora import Adapted
    from alignjax.generation.policy import load_policy

    step, params = th.final_params(uninterrupted)
    assert set(params) == {"lora"}
    leaves = jax.tree_util.tree_leaves_with_path(params)
    assert all(jax.tree_util.keystr(p).endswith(("['a']", "['b']")) for p, _ in leaves)
    meta = mc.load_meta(os.path.join(uninterrupted, "checkpoints"), step)
    assert meta["lora"]["quantize_base"] == "nf4" and meta["lora"]["lora_dropout"] == 0.1

    # With dropout on, DPO's first step no longer equals the reference (PEFT/TRL: the
    # reference runs with adapters off or in eval mode), but stays near log 2.
    with open(os.path.join(uninterrupted, "metrics.jsonl")) as f:
        records = {r["step"]: r for r in map(json.loads, f) if "loss" in r}
    first_dpo = records[th.SFT_STEPS + 1]
    assert first_dpo["rewards/margins"] != 0.0 and abs(first_dpo["loss"] - 0.6931) < 0.05

    # Generation samples through the base the run trained on: quantized the same way.
    policy = load_policy(os.path.join(uninterrupted, "checkpoints"))
    assert isinstance(policy.params, Adapted) and quantize.is_quantized(policy.params.base)

    out = str(tmp_path / "adapter")
    api.orbax_to_hf(os.path.join(uninterrupted, "checkpoints"), out)
    with open(os.path.join(out, "adapter_config.json")) as f:
        adapter_config = json.load(f)
    assert adapter_config["lora_dropout"] == 0.1 and adapter_config["r"] == 4
