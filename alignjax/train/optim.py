"""Optimizers and learning-rate schedules, with transformers' conventions available.

The schedules match transformers' `get_scheduler` step for step (the first update uses
the schedule at count 0), and weight decay skips biases and norm scales the way the
transformers Trainer does, so a run configured like a TRL run takes the same steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
OPTIMIZERS = ("adamw", "adam", "sgd", "lion", "adafactor")


@dataclasses.dataclass(frozen=True)
class OptimSection:
    name: str = "adamw"
    lr: float = 5e-7
    schedule: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0, like transformers
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0  # sgd
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name={self.name!r} is not one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule={self.schedule!r} is not one of {SCHEDULES}")


def warmup_steps(section: OptimSection, total_steps: int) -> int:
    if section.warmup_steps:
        return section.warmup_steps
    return int(-(-section.warmup_ratio * total_steps // 1))  # ceil, as transformers does


def schedule(section: OptimSection, total_steps: int) -> optax.Schedule:
    warm = warmup_steps(section, total_steps)
    lr = section.lr

    def fn(count):
        count = jax.numpy.asarray(count, jax.numpy.float32)
        warm_factor = count / max(1, warm) if warm else 1.0
        progress = (count - warm) / max(1, total_steps - warm)
        if section.schedule in ("constant", "constant_with_warmup"):
            after = 1.0
        elif section.schedule == "linear":
            after = jax.numpy.maximum(0.0, 1.0 - progress)
        else:  # cosine with an optional floor
            cosine = 0.5 * (1.0 + jax.numpy.cos(jax.numpy.pi * jax.numpy.clip(progress, 0.0, 1.0)))
            after = section.min_lr_ratio + (1.0 - section.min_lr_ratio) * cosine
        if section.schedule == "constant":
            return jax.numpy.asarray(lr, jax.numpy.float32)
        return lr * jax.numpy.where(count < warm, warm_factor, after)

    return fn


_NO_DECAY_LEAVES = ("bias", "scale")


def decay_mask(params: Any) -> Any:
    """False for biases and norm scales, by name: scanned layers make them 2-D."""

    def keep(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) not in _NO_DECAY_LEAVES

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(section: OptimSection, total_steps: int) -> optax.GradientTransformation:
    lr = schedule(section, total_steps)
    if section.name == "adamw":
        opt = optax.adamw(
            lr,
            b1=section.b1,
            b2=section.b2,
            eps=section.eps,
            weight_decay=section.weight_decay,
            mask=decay_mask,
        )
    elif section.name == "adam":
        opt = optax.adam(lr, b1=section.b1, b2=section.b2, eps=section.eps)
    elif section.name == "sgd":
        opt = optax.sgd(lr, momentum=section.momentum or None)
    elif section.name == "lion":
        opt = optax.lion(lr, b1=section.b1, b2=section.b2, weight_decay=section.weight_decay, mask=decay_mask)
    else:
        opt = optax.adafactor(lr, weight_decay_rate=section.weight_decay or None)
    if section.max_grad_norm:
        opt = optax.chain(optax.clip_by_global_norm(section.max_grad_norm), opt)
    return opt
