"""The training step: the state in, the state out, all of it kept on the device.

A step is `first` (forward + backward of the objective on the first micro-batch), one
`accumulate` per further micro-batch (gradients and metrics summed into donated
buffers), then `apply` (mean over micro-batches, clipping, optimizer, non-finite guard,
counters). Nothing here returns to the host: the loop reads a step's metrics only on
the steps it logs, after the next step is dispatched. The RNG of micro-batch m of step s
is fold_in(fold_in(base, s), m), computed on the device from the step counter.

Each function takes a `TrainState` and returns the new one; the compiled program under it
takes only the parts it reads and returns only those it writes. jit copies every output
(a part passed through would be copied each micro-batch: the whole reference) and donates
whole arguments (the counters a logging step reads later, and a reference the run shares
across stages, must not be donated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from alignjax.train.methods import Objective
from alignjax.train.state import TrainState


def _is_count(name: str) -> bool:
    """Counts add up over micro-batches; every other metric is averaged, as TRL logs them."""
    return name.startswith("count_") or name.endswith("/counts")


def init_counters(step: int, skipped: int, mesh) -> dict[str, jax.Array]:
    """The device counters: the global step (for the RNG) and the skipped-update count."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.device_put({"step": jnp.int32(step), "skipped": jnp.int32(skipped)}, replicated)


@dataclasses.dataclass(frozen=True)
class StepFns:
    first: Callable[..., Any]  # (state, batch, micro) -> (acc, state)
    accumulate: Callable[..., Any]  # (acc, state, batch, micro) -> (acc, state)
    apply: Callable[..., Any]  # (state, acc) -> (state, metrics)
    skip: Callable[..., Any]  # (state) -> state: a step with nothing to learn from
    eval: Callable[..., Any]  # (state, batch) -> (metrics, per_pair)
    # Counters are not donated: a logging step's are read after the next step is dispatched.
    # Nor is `acc` to `apply`: no output could reuse it; the loop drops it after each step.


def _step_functions(objective: Objective, tx: optax.GradientTransformation):
    """The step's pure functions over the state's parts, before jit."""

    def micro_grads(params, ref_params, batch, loss_state, base_rng, counters, micro):
        rng = jax.random.fold_in(jax.random.fold_in(base_rng, counters["step"]), micro)
        (value, (metrics, loss_state, _)), grads = jax.value_and_grad(objective.fn, has_aux=True)(
            params, ref_params, batch, loss_state, rng
        )
        return {"grads": grads, "metrics": dict(metrics, loss=value), "n": jnp.int32(1)}, loss_state

    def accumulate(acc, params, ref_params, batch, loss_state, base_rng, counters, micro):
        new, loss_state = micro_grads(params, ref_params, batch, loss_state, base_rng, counters, micro)
        return jax.tree.map(jnp.add, acc, new), loss_state

    def apply(params, opt_state, acc, counters):
        n = acc["n"]
        grads = jax.tree.map(lambda g: g / n.astype(g.dtype), acc["grads"])
        metrics = {k: v if _is_count(k) else v / n.astype(v.dtype) for k, v in acc["metrics"].items()}
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # A non-finite step leaves parameters and optimizer state exactly as they were.
        keep = lambda new, old: jnp.where(finite, new, old)
        params = jax.tree.map(keep, new_params, params)
        opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        counters = {
            "step": counters["step"] + 1,
            "skipped": counters["skipped"] + (~finite).astype(jnp.int32),
        }
        return params, opt_state, counters, dict(metrics, grad_norm=grad_norm)

    def skip(counters):
        return {"step": counters["step"] + 1, "skipped": counters["skipped"] + 1}

    def eval_fn(params, ref_params, batch, loss_state, base_rng):
        # No key: evaluation runs without dropout (adapters', mask head's), as in eval mode.
        del base_rng
        value, (metrics, _, per_pair) = objective.fn(params, ref_params, batch, loss_state, None)
        return dict(metrics, loss=value), per_pair

    return micro_grads, accumulate, apply, skip, eval_fn


def make_step_fns(objective: Objective, tx: optax.GradientTransformation, param_shardings, opt_shardings):
    micro_grads, accumulate, apply, skip, eval_fn = _step_functions(objective, tx)
    acc_shardings = {"grads": param_shardings, "metrics": None, "n": None}
    first_c = jax.jit(micro_grads, out_shardings=(acc_shardings, None))
    accumulate_c = jax.jit(accumulate, donate_argnums=(0,), out_shardings=(acc_shardings, None))
    apply_c = jax.jit(
        apply, donate_argnums=(0, 1), out_shardings=(param_shardings, opt_shardings, None, None)
    )
    skip_c, eval_c = jax.jit(skip), jax.jit(eval_fn)

    def first_step(state: TrainState, batch, micro):
        acc, method_state = first_c(
            state.params, state.reference, batch, state.method_state, state.rng, state.counters, micro
        )
        return acc, state.replace(method_state=method_state)

    def accumulate_step(acc, state: TrainState, batch, micro):
        acc, method_state = accumulate_c(
            acc, state.params, state.reference, batch, state.method_state, state.rng, state.counters, micro
        )
        return acc, state.replace(method_state=method_state)

    def apply_step(state: TrainState, acc):
        params, opt_state, counters, metrics = apply_c(state.params, state.opt_state, acc, state.counters)
        return state.replace(params=params, opt_state=opt_state, counters=counters), metrics

    def skip_step(state: TrainState):
        return state.replace(counters=skip_c(state.counters))

    def eval_step(state: TrainState, batch):
        return eval_c(state.params, state.reference, batch, state.method_state, state.rng)

    return StepFns(
        first=first_step, accumulate=accumulate_step, apply=apply_step, skip=skip_step, eval=eval_step
    )


def fused_step(objective: Objective, tx: optax.GradientTransformation):
    """One micro-batch's gradients and the update as one function: every buffer a step holds
    is live in it at once (what `compile-check` measures).

    (params, opt_state, ref, batch, loss_state, base_rng, counters, micro)
        -> ((params, opt_state, counters, metrics), loss_state)
    """
    micro_grads, _, apply, _, _ = _step_functions(objective, tx)

    def step(params, opt_state, ref_params, batch, loss_state, base_rng, counters, micro):
        acc, loss_state = micro_grads(params, ref_params, batch, loss_state, base_rng, counters, micro)
        return apply(params, opt_state, acc, counters), loss_state

    return step
