"""`alignjax describe CONFIG [key=value ...]`: build a config's model and run one forward pass."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import numpy as np

from alignjax.convert.loading import ModelSection, load_model
from alignjax.core import configlib
from alignjax.core.errors import run_command
from alignjax.models import decoder, head


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignjax describe", description="Build a config's model and run one forward pass."
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("describe", _describe, build_parser().parse_args(argv))


def _describe(args: argparse.Namespace) -> int:
    tree = configlib.load_yaml(args.config)
    for override in args.overrides:
        configlib.apply_override(tree, override)
    section = configlib.from_dict(ModelSection, tree.get("model", {}), "model")
    model = load_model(section, jax.random.key(int(tree.get("seed", 0))))
    cfg = model.cfg
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(model.params))
    print(
        f"model_type={cfg.model_type} layers={cfg.num_layers} hidden={cfg.hidden_size} "
        f"heads={cfg.num_heads}/{cfg.num_kv_heads} vocab={cfg.vocab_size} params={n_params:,}"
    )
    print(
        f"layer types: {', '.join(sorted(set(cfg.layer_types)))}; dtype={cfg.dtype} "
        f"scan={cfg.scan_layers} remat={cfg.remat_policy} attention={cfg.attention_backend}"
    )
    tokens = np.arange(16, dtype=np.int32)[None] % cfg.vocab_size
    hidden = decoder.apply(model.params, cfg, tokens, np.arange(16)[None], np.ones((1, 16), np.int32))
    logits = head.logits_BxLxV(model.params, cfg, hidden)
    print(
        f"forward pass ok: logits {tuple(logits.shape)}, finite={bool(np.isfinite(np.asarray(logits)).all())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
