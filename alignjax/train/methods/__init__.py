"""Training methods, one module each, looked up by `method_for(loss)`.

Every built-in method registers here, the online ones (MO-ODPO, online CUT) included, so
any config loads after a plain import.
"""

from alignjax.train.methods import cut, dpo, kto, online, pdpo, reward, sft, sparsepo
from alignjax.train.methods.registry import Method, Objective, method_for, register, section_types

# Order matters only where two accept the same loss: the later one is asked first.
for _method in (
    dpo.METHOD, sft.METHOD, sparsepo.METHOD, pdpo.METHOD, cut.METHOD, reward.METHOD, kto.METHOD,
    online.MO_ODPO, online.ONLINE_CUT,
):
    register(_method)

__all__ = ["Method", "Objective", "method_for", "register", "section_types"]
