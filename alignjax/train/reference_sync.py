"""TR-DPO (`loss.sync_ref_model`): a reference that moves toward the policy as it trains.

After every `loss.ref_model_sync_steps`-th step of a stage (counted from the stage's
start, as TRL counts its steps), the reference becomes
`ref_model_mixup_alpha * policy + (1 - alpha) * reference`, leaf by leaf in the
reference's dtype. The reference is then training state: every checkpoint of the stage
carries it, and a resume inside the stage continues from the saved one, not from the
stage's frozen start.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignjax.train.reference import abstract_arrays


def reference_sync(loss, shardings):
    """The jitted `(reference, policy decoder) -> reference` update, or None when the
    stage's reference stays frozen. The result is placed like the reference."""
    if not loss.sync_ref_model:
        return None
    alpha = loss.ref_model_mixup_alpha

    def mix(ref, policy):
        return jax.tree.map(
            lambda r, p: (alpha * p.astype(r.dtype) + (1.0 - alpha) * r).astype(r.dtype), ref, policy
        )

    return jax.jit(mix, out_shardings=shardings)


def syncs_after(loss, first_step: int, step: int) -> bool:
    """Whether the reference moves after global step `step` (1-based within the stage)."""
    return (step - first_step) % loss.ref_model_sync_steps == 0


def moving_reference_like(run):
    """What a checkpoint restores a moving reference onto: the frozen one's shapes and
    placement (`model.reference_dtype`, the run's parameter shardings)."""
    dtype = jnp.dtype(run.cfg.model.effective_reference_dtype)
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, dtype), run.loaded.params)
    return abstract_arrays(shapes, run.param_shardings)
