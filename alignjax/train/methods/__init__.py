"""Training methods, one module each, looked up by `method_for(loss)`.

The built-in offline methods register here; MO-ODPO and online CUT, which sample from
the policy, register when `alignjax.online` is imported (their batch sources live there).
"""

from alignjax.train.methods import cut, dpo, kto, pdpo, reward, sft, sparsepo
from alignjax.train.methods.registry import Method, Objective, method_for, register, section_types

# Order matters only where two accept the same loss: the later one is asked first.
for _module in (dpo, sft, sparsepo, pdpo, cut, reward, kto):
    register(_module.METHOD)

__all__ = ["Method", "Objective", "method_for", "register", "section_types"]
