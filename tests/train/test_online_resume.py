"""An online (MO-ODPO) stage resumes exactly: killed mid-stage and restarted, it samples,
scores and trains on what the uninterrupted run did, to the same parameters."""

import os
import signal

import pytest
import yaml

import train_helpers as th

SFT_STEPS, ONLINE_STEPS, SAVE_EVERY = 4, 8, 2
TOTAL = SFT_STEPS + ONLINE_STEPS


def _config(tmp_path, name):
    run_dir = str(tmp_path / name)
    cfg = th.tiny_config(run_dir)
    cfg["data"] = {
        "builtin": "weighted_style",
        "train": "builtin:prompts",
        "max_length": 96,
        "max_prompt_length": 64,
        "templates": {"weights": "Objective weights: brevity {brevity:.0%}, keyword {keyword:.0%}."},
    }
    cfg["loss"] = {
        "type": "mo_odpo",
        "beta": 0.3,
        "mo_odpo": {
            "rewards": [
                {"name": "length", "unit": "chars", "target": 0, "scale": 0.3333},
                {"name": "keyword_count", "keywords": ["ok"], "whole_word": True, "cap": 4},
            ],
            "num_samples": 3,
            "max_new_tokens": 16,
            "grid": 4,
        },
    }
    cfg["train"].update(steps=TOTAL, save_every=SAVE_EVERY, batch_size=4)
    cfg["stages"] = [
        {
            "name": "sft",
            "loss.type": "sft",
            "data.record_type": "sft",
            "data.train": "builtin:sft",
            "train.steps": SFT_STEPS,
        },
        {"name": "mo_odpo", "train.steps": ONLINE_STEPS},
    ]
    path = str(tmp_path / f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path, run_dir


@pytest.mark.slow
def test_mo_odpo_killed_mid_stage_resumes_to_the_same_parameters(tmp_path, compile_cache):
    reference, reference_dir = _config(tmp_path, "uninterrupted")
    th.run(reference, cache_dir=compile_cache)
    config, run_dir = _config(tmp_path, "killed")
    proc = th.start(config, cache_dir=compile_cache)
    th.wait_for_checkpoint(proc, run_dir, SFT_STEPS + SAVE_EVERY)
    assert proc.poll() is None, f"run ended before it could be killed:\n{th.log_text(proc)[-3000:]}"
    th.kill(proc, signal.SIGKILL)
    assert TOTAL not in th.finalized_steps(run_dir)
    th.run(config, cache_dir=compile_cache)

    expected, losses = th.losses(reference_dir), th.losses(run_dir)
    assert sorted(losses) == list(range(1, TOTAL + 1))
    th.assert_losses_match(losses, expected, range(1, TOTAL + 1), 1e-6, "resumed MO-ODPO vs uninterrupted")
    step, params = th.final_params(run_dir)
    _, expected_params = th.final_params(reference_dir)
    assert step == TOTAL
    th.assert_trees_close(params, expected_params, 1e-6, "final parameters after a kill in the online stage")
    assert os.path.isdir(os.path.join(run_dir, "reference", "mo_odpo"))
