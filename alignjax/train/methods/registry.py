"""The objective registry: every training method is one module that declares itself here.

A `Method` says when it applies (`accepts(loss)`), its config section (`loss.<name>`),
what its records need from the data pipeline, its batch source (None: the stage's data
pipeline), whether it can read precomputed reference log-probs, and how to build its
`Objective` (loss function, reference needs, extra trainable parts) from typed sizes.
The trainer looks methods up; it never switches on a method's name. Adding a method is
one module plus one `register` line (in `alignjax/train/methods/__init__.py`).

Methods registered later are asked first, so a specialisation (online CUT: `cut` with a
judge) registers after the method it specialises.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Objective:
    """A built method: `fn(params, ref_params, batch, state, rng) -> (loss, (metrics, state, per_pair))`.

    `params` is `{"decoder": ..., <part>: ...}`: the decoder and the method's own trainable
    parts (`init_parts`); `ref_params` is the frozen reference decoder (or None).
    `per_pair` carries per-pair implicit-reward margins for exact eval aggregation.
    `rng` is the micro-step's key in training and None in evaluation (dropout off).
    """

    fn: Callable[..., Any]
    needs_reference: bool
    init_state: Callable[[], Any] = dict
    # (rng, decoder params) -> {part name: params}, e.g. {"mask_head": ...}.
    init_parts: Callable[[Any, Any], dict[str, Any]] = lambda rng, decoder: {}
    # (model transform, learning-rate schedule) -> the transform over all parts.
    wrap_optimizer: Callable[[Any, Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    accepts: Callable[[Any], bool]  # (LossSection) -> whether this method trains it
    build: Callable[[Any, Any, dict[str, int]], Objective]  # (ModelConfig, LossSection, sizes)
    # The dataclass of `loss.<name>`: the keys the method reads, and (where the method's
    # loss has options of its own) the config its loss function takes.
    section: type | None = None
    # (RunSetup, Stage, stage index, train DataConfig) -> a source with `next_for(params, step)`;
    # None: the stage's data pipeline.
    batch_source: Callable[..., Any] | None = None
    # (LossSection) -> how that source samples from the policy (`alignjax.online.rollout.
    # RolloutPlan`), which compile-check compiles the sampling programs for; None: it does not.
    rollout: Callable[[Any], Any] | None = None
    # The record type of the batches its source yields when not `data.record_type` (an online
    # source reads prompts and yields pairs or CUT views): what sizes a compiled step.
    batch_record_type: str | None = None
    # Whether, under `loss.reference: precomputed`, it reads `alignjax precompute-ref` tables.
    reads_reference_table: Callable[[Any], bool] = lambda loss: False
    # Why `loss.reference: precomputed` cannot serve it (a config error); None: it can, or
    # it has no reference to precompute.
    no_precomputed_reference: str | None = None
    # (LossSection) -> None: raises ValueError naming the `loss.` key of a value it cannot
    # train with; runs when the config loads, before any model or data is read.
    check: Callable[[Any], None] = lambda loss: None
    # (LossSection) -> the DataConfig values its records need, from its section (P-DPO's
    # user-token slots, SparsePO's given token weights): the data pipeline tokenises with
    # them, and a method that declares none gets DataConfig's defaults.
    data_options: Callable[[Any], dict[str, Any]] = lambda loss: {}
    # What `data.over_length: auto` means for its records: truncate (TRL's DPOTrainer cuts
    # over-long sequences) or drop (TRL's RewardTrainer filters over-long pairs out).
    over_length: str = "truncate"


_METHODS: list[Method] = []


def register(method: Method) -> Method:
    if any(m.name == method.name for m in _METHODS):
        raise ValueError(f"a method named {method.name!r} is registered already")
    _METHODS.append(method)
    return method


def method_for(loss) -> Method:
    """The method that trains `loss` (the latest registered one that accepts it)."""
    for method in reversed(_METHODS):
        if method.accepts(loss):
            return method
    known = sorted({m.name for m in _METHODS})
    raise ValueError(
        f"loss.type={loss.type!r} names no registered method (registered: {', '.join(known)}; "
        "online methods register when alignjax.online is imported)"
    )


def section_types() -> dict[str, type]:
    """Every registered method's config section, by its key under `loss:`."""
    return {m.name: m.section for m in _METHODS if m.section is not None}
