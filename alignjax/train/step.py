"""The compiled pieces of a training step: gradients, evaluation, the update.

A step is `grads` (forward + backward of the stage's objective on one batch) and
`update` (clipping, optimizer, and the non-finite guard). Gradient accumulation sums
`grads` over micro-batches on the device before one `update`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from alignjax.train.objectives import Objective


def make_grads_fn(objective: Objective):
    def grads_fn(params, ref_params, batch, state, rng):
        (value, (metrics, state, _)), grads = jax.value_and_grad(objective.fn, has_aux=True)(
            params, ref_params, batch, state, rng
        )
        return grads, dict(metrics, loss=value), state

    return grads_fn


def make_eval_fn(objective: Objective):
    def eval_fn(params, ref_params, batch, state, rng):
        value, (metrics, _, per_pair) = objective.fn(params, ref_params, batch, state, rng)
        return dict(metrics, loss=value), per_pair

    return eval_fn


def make_update_fn(tx: optax.GradientTransformation):
    def update_fn(params, opt_state, grads, loss_value):
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # A non-finite step leaves parameters and optimizer state exactly as they were.
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree.map(keep, new_params, params)
        opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        return params, opt_state, {"grad_norm": grad_norm, "skipped": (~finite).astype(jnp.int32)}

    return update_fn


def add_trees(a, b):
    return jax.tree.map(jnp.add, a, b)
