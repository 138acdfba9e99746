"""What every reproduction reads from a finished training run: its policy, the stage's
config and frozen reference, how it renders prompts, and implicit-reward margins of
held-out pairs grouped by a record field."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from alignjax.data import ops as data_ops
from alignjax.data.config import SourceConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.evaluation import grid as eval_grid
from alignjax.evaluation import sweep as grid_sweep
from alignjax.evaluation.grid import GridPoint
from alignjax.generation.policy import Policy, load_policy
from alignjax.generation.prompting import PromptRenderer
from alignjax.generation.responses import sampling_config
from alignjax.models import decoder
from alignjax.train.config import LossSection, Stage, load_config, stages
from alignjax.train.methods.common import logps_from_hidden
from alignjax.train.run_config import find_run_config, policy_stage, run_data_config, run_user_vocab


@dataclasses.dataclass
class Run:
    """A training run at its last checkpoint, and the stage that wrote it."""

    policy: Policy
    stage: Stage
    renderer: PromptRenderer
    run_dir: str

    @property
    def data_file(self):
        """`data_file(name)`: the path of the run's generated built-in file `name`.jsonl."""
        return lambda name: os.path.join(self.run_dir, "data", f"{name}.jsonl")


def load_run(run_dir: str) -> Run:
    policy = load_policy(run_dir)
    config = find_run_config(policy.run_dir)
    if config is None:
        raise FileNotFoundError(f"{run_dir}: no config.yaml; pass the directory of an `alignjax train` run")
    all_stages = stages(load_config(config))
    stage = next((s for s in all_stages if s.name == policy_stage(policy)), all_stages[-1])
    user_vocab = run_user_vocab(config, stage.name, policy.run_dir)
    renderer = PromptRenderer(run_data_config(config, stage.name), policy.tokenizer, user_vocab)
    return Run(policy, stage, renderer, policy.run_dir)


def reference_params(run: Run):
    from alignjax.evaluation.personalized import load_reference

    return load_reference(run.run_dir, run.stage.name, run.policy)


def _margins_fn(cfg, beta: float):
    def sequence_logps_BxL(params, batch):
        hidden_BxLxD = decoder.apply(
            params, cfg, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL
        )
        return logps_from_hidden(params, cfg, LossSection(), hidden_BxLxD, batch.tokens_BxL)

    @jax.jit
    def margins_P(params, ref_params, batch):
        chosen_P, rejected_P = data_ops.pair_sums(sequence_logps_BxL(params, batch), batch)
        ref_chosen_P, ref_rejected_P = data_ops.pair_sums(sequence_logps_BxL(ref_params, batch), batch)
        return beta * ((chosen_P - ref_chosen_P) - (rejected_P - ref_rejected_P))

    return margins_P


def eval_data(run: Run, eval_path: str, record_type: str, batch_size: int, **overrides):
    """The run's data settings reading `eval_path` once, in order, unpacked, in this process:
    how every reproduction scores held-out records as the run would tokenise them."""
    return dataclasses.replace(
        run.renderer.data_cfg,
        sources=[SourceConfig(path=eval_path)],
        record_type=record_type,
        batch_size=batch_size,
        shuffle=False,
        num_epochs=1,
        packing=False,
        worker_count=0,
        **overrides,
    )


def margins_by_group(run: Run, eval_path: str, group_field: str, batch_size: int = 16):
    """(margin_N, group_N): the DPO implicit-reward margin of every pair of `eval_path`
    under the run's policy and its stage's reference, with each pair's `group_field` value."""
    data_cfg = eval_data(
        run, eval_path, "preference", batch_size, n_user_tokens=0, condition_field=group_field
    )
    margins = _margins_fn(run.policy.cfg, run.stage.config.loss.beta)
    ref = reference_params(run)
    pipeline = make_pipeline(data_cfg, run.policy.tokenizer, process_index=0, process_count=1)
    names = ["", *pipeline.condition_vocab.keys]
    margin_N, group_N = [], []
    for batch in pipeline:
        valid_P = batch.pair_valid_P > 0
        margin_N.append(np.asarray(margins(run.policy.params, ref, batch))[valid_P])
        group_N += [names[i] for i in batch.condition_id_P[valid_P]]
    pipeline.close()
    return np.concatenate(margin_N), np.asarray(group_N)


def generate(
    run: Run,
    prompts: list[dict[str, Any]],
    points: list[GridPoint],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Greedy responses for every (point, prompt), as `alignjax eval` samples them, each
    scored by its length in characters: sample dicts with point, prompt_index, response."""
    sampling = sampling_config(run.policy, max_new_tokens, 0.0)
    objectives = eval_grid.build_labelled_rewards(["length"], None)
    samples, _ = grid_sweep.sweep(
        run.policy, run.renderer, prompts, points, objectives, sampling, seed=seed, batch_size=batch_size
    )
    return samples
