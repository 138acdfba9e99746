"""f-DPO: the f-divergence regulariser between policy and reference (TRL's `f_divergence_type`).

Under an f-divergence, the implicit reward of a response is beta * f'(pi_theta / pi_ref)
instead of beta * log(pi_theta / pi_ref). The losses built on the chosen-minus-rejected
reward difference take these scores in place of the log-ratios; with `reverse_kl`,
f'(t) = log t, the scores are the log-ratios themselves.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.nn import log_sigmoid

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# Losses whose only use of the log-ratios is the chosen-rejected difference: there the
# log-partition term of the f-DPO reparameterisation cancels. `sft` reads no log-ratio.
F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
# alpha -> 1 is reverse KL; TRL switches to it within this distance.
_ALPHA_AT_ONE = 1e-6
# exp(80) is finite in float32: a policy far above its reference saturates, not overflows.
_MAX_ALPHA_EXPONENT = 80.0


def f_divergence_scores(logratio_B: jax.Array, kind: str, alpha_coef: float = 0.5) -> jax.Array:
    """f'(t) at t = exp(logratio) (policy over reference probability of a response), [B].

    reverse_kl: log t; forward_kl: 1 - 1/t; js_divergence: log(2t / (1 + t));
    alpha_divergence: (t^(alpha-1) - 1) / (alpha - 1), reverse_kl when alpha is 1.
    """
    if kind == "reverse_kl":
        return logratio_B
    if kind == "forward_kl":
        return -jnp.expm1(-logratio_B)
    if kind == "js_divergence":
        return math.log(2.0) + log_sigmoid(logratio_B)
    if kind == "alpha_divergence":
        if abs(alpha_coef - 1.0) < _ALPHA_AT_ONE:
            return logratio_B
        exponent_B = jnp.minimum((alpha_coef - 1.0) * logratio_B, _MAX_ALPHA_EXPONENT)
        return jnp.expm1(exponent_B) / (alpha_coef - 1.0)
    raise ValueError(f"f_divergence_type={kind!r}: use one of {', '.join(F_DIVERGENCES)}")
