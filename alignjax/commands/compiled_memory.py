"""What a compiled program holds on one chip, or the compiler's refusal when it cannot fit.

Shared by compile-check's training step and sampling programs: memory claims come from
the compiled program (`memory_analysis()`), never from estimates.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np

from alignjax.core.hardware import GiB


def bytes_per_chip(shapes, shardings) -> int:
    """Bytes of the largest shard of every leaf: what one chip holds of a laid-out tree."""
    total = 0
    for shape, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
        total += math.prod(sh.shard_shape(shape.shape)) * np.dtype(shape.dtype).itemsize
    return total


def compile_or_refusal(lowered):
    """(compiled, None), or (None, the compiler's reason) when the TPU compiler refuses a
    program whose temporaries alone exceed HBM."""
    try:
        return lowered.compile(), None
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, str(e).split("RESOURCE_EXHAUSTED: ", 1)[-1].strip()


def refused_temporaries(refusal: str) -> int:
    """The temporaries a refused program needed, as the compiler states them (0 if it does not)."""
    needed = re.search(r"HLO temporaries \(([0-9.]+)G\)", refusal)
    return int(float(needed.group(1)) * GiB) if needed else 0


def total_bytes(compiled) -> int:
    """Arguments, outputs not aliased to arguments, and temporaries: the program's peak."""
    memory = compiled.memory_analysis()
    return (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )


def gib(n: int) -> str:
    return f"{n / GiB:8.2f} GiB"


def budget(total: int, hbm: int | None, fits: bool) -> str:
    """'of 16.00 GiB, 12.3% spare: fits' (a host's memory is unknown)."""
    of = f"{hbm / GiB:.2f} GiB" if hbm else "unknown (host)"
    spare = f", {100 * (1 - total / hbm):.1f}% spare" if hbm else ""
    return f"of {of}{spare}: {'fits' if fits else 'DOES NOT FIT'}"
