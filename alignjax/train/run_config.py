"""What a run directory's saved config says about rendering prompts: the `data:` settings
of a stage and the P-DPO user vocabulary, so generation and evaluation see prompts as
training built them."""

from __future__ import annotations

import sys

from alignjax.core import paths
from alignjax.data.config import DataConfig
from alignjax.data.formats import decode
from alignjax.data.sources import open_sources
from alignjax.data.vocab import Vocab
from alignjax.generation.policy import Policy
from alignjax.generation.prompting import PromptRenderer
from alignjax.train.checkpoint import recorded_stage
from alignjax.train.config import data_config, load_config, sources_from, stages

RUN_CONFIG_NAME = "config.yaml"  # where a run directory keeps its resolved config


def find_run_config(run_dir: str | None) -> str | None:
    if run_dir is None:
        return None
    path = paths.join(run_dir, RUN_CONFIG_NAME)
    return path if paths.exists(path) else None


def run_data_config(config_path: str | None, stage: str | None) -> DataConfig:
    """The `data:` settings of one stage of a training config (the last stage if `stage`
    is None or unknown), or the defaults, with a warning, when there is no config."""
    if config_path is None:
        print(
            "warning: no run config found; prompts are rendered with the default data.templates. "
            "Pass --config RUN_CONFIG.yaml (the one the model was trained with) to render them "
            "as training did.",
            file=sys.stderr,
        )
        return DataConfig(record_type="prompt")
    all_stages = stages(load_config(config_path))
    chosen = next((s for s in all_stages if s.name == stage), all_stages[-1])
    return data_config(chosen.config, [], batch_size=1, record_type="prompt")


def run_user_vocab(config_path: str | None, stage: str | None, run_dir: str | None) -> Vocab | None:
    """The P-DPO user-id vocabulary a run trained with: `data.user_vocab_path` if it was
    saved, else rebuilt as the trainer builds it (sorted user ids of the stage's train
    data). None when the config reserves no user slots."""
    if config_path is None:
        return None
    all_stages = stages(load_config(config_path))
    stage_cfg = next((s for s in all_stages if s.name == stage), all_stages[-1]).config
    if data_config(stage_cfg, [], batch_size=1).n_user_tokens == 0:
        return None
    data = stage_cfg.data
    if data.user_vocab_path and paths.exists(data.user_vocab_path):
        return Vocab.load(data.user_vocab_path)
    train = data.train if isinstance(data.train, list) else [data.train]
    # `builtin:NAME` is the trainer's name for <run_dir>/data/NAME.jsonl.
    train = [
        paths.join(run_dir or ".", "data", p.split(":", 1)[1] + ".jsonl")
        if isinstance(p, str) and p.startswith("builtin:")
        else p
        for p in train
    ]
    keys = set()
    for i, source_cfg in enumerate(sources_from(train, "data.train")):
        for source in open_sources(source_cfg, f"data.train[{i}]"):
            for j in range(len(source)):
                user = decode(source[j]).get("user_id")
                if isinstance(user, (str, int)) and not isinstance(user, bool):
                    keys.add(str(user))
    return Vocab(keys, "user_id")


def prompt_renderer(
    policy: Policy, config: str | None, stage: str | None, user_vocab_path: str | None
) -> PromptRenderer:
    """The prompt rendering a policy was trained with: `config` (default the run's saved one)
    and `stage` (default the stage that wrote the checkpoint); P-DPO user ids map through
    `user_vocab_path`, else the run's user vocabulary."""
    config = config or find_run_config(policy.run_dir)
    stage = stage or policy_stage(policy)
    if user_vocab_path:
        user_vocab = Vocab.load(user_vocab_path)
    else:
        user_vocab = run_user_vocab(config, stage, policy.run_dir)
    return PromptRenderer(run_data_config(config, stage), policy.tokenizer, user_vocab)


def policy_stage(policy: Policy) -> str | None:
    """The training stage that wrote a policy's checkpoint step, from its loop state."""
    if policy.checkpoint_root is None or policy.step is None:
        return None
    return recorded_stage(policy.checkpoint_root, policy.step)
