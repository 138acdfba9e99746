"""LoRA training: only adapters train and are saved, the reference is the base with the
stage's starting adapters, and a run killed twice ends where the uninterrupted one does.

The run is the resume tests' SFT -> DPO recipe (`train_helpers.tiny_config`) with
`model.lora`, as real `alignjax train` processes.
"""

import json
import math
import os
import signal

import numpy as np
import pytest
import train_helpers as th

LORA = {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]}


def _config(root, name):
    return th.write_lora_config(root, name, LORA)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache):
    root = tmp_path_factory.mktemp("lora")
    config, run_dir = _config(root, "whole")
    th.run(config, cache_dir=compile_cache, log_path=str(root / "whole.log"))
    return run_dir


def _leaf_bytes(tree):
    import jax

    return {
        jax.tree_util.keystr(p): np.asarray(x).nbytes for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.mark.slow
def test_only_adapters_are_trained_and_saved(uninterrupted):
    from alignjax.convert import model_checkpoint as mc

    step, params = th.final_params(uninterrupted)
    assert step == th.TOTAL_STEPS
    assert set(params) == {"lora"}
    sizes = _leaf_bytes(params)
    # Every saved array is an adapter matrix of rank 4: [in, 4] or [4, out...] (float32).
    for path in sizes:
        assert path.endswith(("['a']", "['b']")), path
    hidden, mlp, layers, r = 64, 128, 2, 4
    q_out, kv_out = hidden, 2 * (hidden // 4)  # 4 heads of 16; 2 KV heads
    per_layer = (
        (hidden * r + r * q_out)  # q
        + (hidden * r + r * kv_out)  # v
        + (q_out * r + r * hidden)  # o
        + (hidden * r + r * mlp)  # gate
        + (mlp * r + r * hidden)  # down
    )
    assert sum(sizes.values()) == layers * per_layer * 4
    # The checkpoint names its base instead of holding it, and its optimizer state holds
    # Adam's two moments of the adapters (plus scalars): no base-sized array anywhere.
    root = os.path.join(uninterrupted, "checkpoints")
    meta = mc.load_meta(root, step)
    assert meta["lora"]["r"] == 4 and meta["lora"]["lora_alpha"] == 8.0
    assert meta["lora"]["target_modules"] == LORA["targets"]
    assert meta["lora"]["base_model_name_or_path"] == "preset:tiny"
    # Adam's two moments of each adapter, plus scalars (counts): read from the saved
    # metadata, so every array the step holds in the checkpoint is accounted for.
    import jax
    import orbax.checkpoint as ocp

    from alignjax.train.checkpoint import OPT_ITEM

    opt = ocp.PyTreeCheckpointer().metadata(os.path.join(root, str(step), OPT_ITEM))
    opt = getattr(getattr(opt, "item_metadata", opt), "tree", opt)
    elements = [math.prod(leaf.shape) for leaf in jax.tree.leaves(opt) if len(leaf.shape) > 0]
    assert sum(elements) == 2 * layers * per_layer


@pytest.mark.slow
def test_reference_is_the_stage_start_and_step_one_margins_are_exactly_zero(uninterrupted):
    # SFT started from fresh adapters: its reference is the base with adapters off (a
    # marker, no arrays). DPO started from the SFT adapters: they alone are its reference.
    assert os.path.exists(os.path.join(uninterrupted, "reference", "sft.adapters_off.json"))
    dpo_ref = os.path.join(uninterrupted, "reference", "dpo")
    assert os.path.isdir(dpo_ref)
    from alignjax.convert import model_checkpoint as mc

    ref_params = mc.load_params(*mc.resolve(dpo_ref))
    sft_end = mc.load_params(os.path.join(uninterrupted, "checkpoints"), th.SFT_STEPS)["lora"]
    th.assert_trees_close(ref_params, sft_end, 0.0, "DPO reference vs the SFT stage's last adapters")
    with open(os.path.join(uninterrupted, "metrics.jsonl")) as f:
        records = {r["step"]: r for r in map(json.loads, f) if "loss" in r}
    first_dpo = records[th.SFT_STEPS + 1]
    assert first_dpo["rewards/margins"] == 0.0 and first_dpo["rewards/accuracies"] == 0.0
    assert first_dpo["loss"] == pytest.approx(math.log(2), abs=1e-7)
    later = [records[s]["rewards/margins"] for s in range(th.SFT_STEPS + 2, th.TOTAL_STEPS + 1)]
    assert max(abs(m) for m in later) > 1e-4  # the adapters move


@pytest.mark.slow
def test_sigkill_in_sft_then_in_dpo_resumes_to_the_same_adapters(
    uninterrupted, tmp_path, compile_cache, log_path
):
    config, run_dir = _config(tmp_path, "killed")
    for at_least in (th.SAVE_EVERY, th.SFT_STEPS + th.SAVE_EVERY):
        proc = th.start(config, cache_dir=compile_cache, log_path=log_path(f"kill{at_least}"))
        th.wait_for_checkpoint(proc, run_dir, at_least)
        assert proc.poll() is None, f"run ended before it could be killed:\n{th.log_text(proc)[-3000:]}"
        th.kill(proc, signal.SIGKILL)
        assert th.TOTAL_STEPS not in th.finalized_steps(run_dir)
    th.run(config, cache_dir=compile_cache, log_path=log_path("last"))
    losses = th.losses(run_dir)
    th.assert_losses_match(
        losses, th.losses(uninterrupted), range(1, th.TOTAL_STEPS + 1), 1e-6, "resumed LoRA run"
    )
    _, params = th.final_params(run_dir)
    _, expected = th.final_params(uninterrupted)
    th.assert_trees_close(params, expected, 1e-6, "adapters after two SIGKILLs")


def _recipe(name, run_dir, *overrides):
    from alignjax import cli

    args = ["train", os.path.join(th.REPO, "configs", f"{name}.yaml"), f"run_dir={run_dir}"]
    args += ["logging.progress_bar=false", "logging.tensorboard=false", *overrides]
    assert cli.main(args) == 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


@pytest.mark.slow
def test_online_and_personalised_methods_and_precomputed_references_train_adapters(tmp_path):
    """MO-ODPO and online CUT (sampling through the adapted policy), P-DPO (the user model
    trains beside the adapters) and DPO against a precomputed table of the adapters-off
    base, a few steps each."""
    from alignjax import cli
    from alignjax.convert import model_checkpoint as mc

    lora = "model.lora={rank: 4, alpha: 8}"
    small = "model.preset_overrides={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64}"
    short = [
        small,
        "stages.0.train.steps=1",
        "stages.1.train.steps=2",
        "train.log_every=1",
        "train.save_every=100",
    ]
    online = ["loss.mo_odpo.num_samples=2", "loss.mo_odpo.max_new_tokens=16", "train.batch_size=8"]
    mo = _recipe("mo_odpo_quickstart", str(tmp_path / "mo"), lora, *short, *online)
    assert [r["step"] for r in mo] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in mo)
    params = mc.load_params(*mc.resolve(str(tmp_path / "mo" / "checkpoints")))
    assert set(params) == {"lora"}

    # Online CUT: the adapted policy answers, a judge critiques, with adapter dropout on.
    judge = (
        "loss.cut.judge={name: threshold, reward: {name: length, unit: chars}, threshold: 20, "
        "critique: Too long.}"
    )
    cut = _recipe(
        "cut",
        str(tmp_path / "ocut"),
        "model.lora={rank: 4, alpha: 8, dropout: 0.1}",
        small,
        "train.steps=2",
        "train.log_every=1",
        "train.batch_size=4",
        judge,
        "loss.cut.sampling={max_new_tokens: 16}",
        "data.train=builtin:train",
    )
    assert [r["step"] for r in cut] == [1, 2] and all(math.isfinite(r["loss"]) for r in cut)
    params = mc.load_params(*mc.resolve(str(tmp_path / "ocut" / "checkpoints")))
    assert set(params) == {"lora"}

    pdpo = _recipe("pdpo", str(tmp_path / "pdpo"), lora, *short)
    assert len(pdpo) == 3 and all(math.isfinite(r["loss"]) for r in pdpo)
    params = mc.load_params(*mc.resolve(str(tmp_path / "pdpo" / "checkpoints")))
    assert set(params) == {"lora", "user_model"}
    # `alignjax eval --pdpo-eval` rebuilds the reference of a LoRA stage (the SFT adapters
    # on the base) and measures what the trainer's end-of-stage eval measured.
    from alignjax.commands import eval as eval_cmd

    run = tmp_path / "pdpo"
    out = tmp_path / "pdpo_eval"
    assert (
        eval_cmd.main([str(run), "--pdpo-eval", str(run / "data" / "pdpo_eval.jsonl"), "--out", str(out)])
        == 0
    )
    table = json.loads((out / "table.json").read_text())["pdpo_accuracy"]
    with open(run / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if "eval/rewards/accuracies" in r]
    assert table["all"]["n"] == 200
    assert table["all"]["accuracy"] == pytest.approx(evals[-1]["eval/rewards/accuracies"], abs=1e-6)

    run_dir = str(tmp_path / "pre")
    config = os.path.join(th.REPO, "configs", "quickstart.yaml")
    common = [
        f"run_dir={run_dir}",
        lora,
        small,
        "stages=null",
        "train.steps=3",
        "data.eval=null",
        "train.log_every=1",
    ]
    common += ["loss.reference=precomputed", "logging.progress_bar=false", "logging.tensorboard=false"]
    assert cli.main(["precompute-ref", config, *common]) == 0
    assert cli.main(["train", config, *common]) == 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "loss" in r]
    # The table holds the adapters-off base: fresh adapters (B = 0) start at margin 0 up to
    # the float noise of two separately compiled forwards.
    assert abs(records[0]["rewards/margins"]) < 1e-5 and len(records) == 3


@pytest.mark.slow
def test_a_lora_checkpoint_on_a_preset_base_loads_for_generation(uninterrupted):
    """A random-init base is rebuilt from the name, overrides and seed the checkpoint
    records: the very weights the run trained on (the run's reference of stage 1)."""
    import jax

    from alignjax.convert.loading import ModelSection, load_model
    from alignjax.data.byte_tokenizer import VOCAB_SIZE
    from alignjax.models.lora import Adapted
    from alignjax.generation.policy import load_policy

    policy = load_policy(os.path.join(uninterrupted, "checkpoints"))
    assert isinstance(policy.params, Adapted)
    cfg = th.tiny_config(uninterrupted)
    section = ModelSection(preset="tiny", preset_overrides=cfg["model"]["preset_overrides"])
    built = load_model(section, jax.random.key(cfg["seed"]), vocab_size=VOCAB_SIZE).params
    th.assert_trees_close(policy.params.base, built, 0.0, "rebuilt preset base")
    _, saved = th.final_params(uninterrupted)
    th.assert_trees_close(policy.params.adapters, saved["lora"], 0.0, "adapters")
    assert policy.cfg.lora_rank == 4 and policy.cfg.lora_scale == 2.0
