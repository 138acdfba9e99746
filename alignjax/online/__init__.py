"""Generation, rewards, evaluation and the methods that sample from the policy while training.

Importing the package registers MO-ODPO and online CUT in the training method registry.
"""

from alignjax.online import methods as _methods  # noqa: F401  (registers)
