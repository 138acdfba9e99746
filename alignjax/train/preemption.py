"""SIGTERM (a preempted VM, `scancel`, Ctrl-\\) becomes a checkpoint, then exit 143."""

from __future__ import annotations

import logging
import signal

import jax

from alignjax.train.multihost import anywhere

log = logging.getLogger("alignjax.train")


class Preempted(SystemExit):
    """Raised after SIGTERM once the current step is checkpointed."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


class Stopper:
    """Turns SIGTERM into a flag the loop polls between steps."""

    def __init__(self, check_every: int):
        self.requested = False
        self.check_every = max(1, check_every)
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: checkpointing at the next agreed step, then exiting")
        self.requested = True

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and exit after `step`. Processes must checkpoint (a collective)
        at the same step and the signal reaches each at its own time, so with several
        processes they agree every `check_every` steps, not every step: the agreement is a
        blocking collective."""
        if jax.process_count() == 1:
            return self.requested
        return step % self.check_every == 0 and anywhere(self.requested)

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)
