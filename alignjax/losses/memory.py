"""Compiled memory of naive vs chunked per-token log-probs (forward + backward).

Nothing is executed: both programs are lowered from shapes and compiled, and XLA's
buffer assignment reports what they would need. `alignjax bench` prints this; the
tests use it to check that chunking removes the batch x length x vocab term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignjax.losses.logps import token_logps


def _naive_logps(hidden_BxLxD, unembed_DxV, targets_BxL):
    logits_BxLxV = jnp.einsum(
        "bld,dv->blv", hidden_BxLxD.astype(jnp.float32), unembed_DxV.astype(jnp.float32)
    )
    logps_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    return jnp.take_along_axis(logps_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]


def _compiled_stats(logps_fn, batch, length, hidden, vocab, dtype):
    def loss(hidden_BxLxD, unembed_DxV, targets_BxL):
        return jnp.sum(logps_fn(hidden_BxLxD, unembed_DxV, targets_BxL))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    shapes = (
        jax.ShapeDtypeStruct((batch, length, hidden), dtype),
        jax.ShapeDtypeStruct((hidden, vocab), dtype),
        jax.ShapeDtypeStruct((batch, length), jnp.int32),
    )
    stats = step.lower(*shapes).compile().memory_analysis()
    # Not stats.peak_memory_in_bytes: the CPU backend leaves temporaries out of it.
    peak = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return {
        "temp_bytes": int(stats.temp_size_in_bytes),
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "peak_bytes": int(peak),
    }


def logps_memory_report(
    batch: int,
    length: int,
    hidden: int,
    vocab: int,
    *,
    token_chunk: int = 1024,
    vocab_chunk: int = 8192,
    dtype=jnp.float32,
) -> dict[str, dict[str, int]]:
    """Compiled bytes of value_and_grad(sum of token logps) w.r.t. hidden and unembed.

    Returns {"naive": {...}, "chunked": {...}}, each with temp_bytes (XLA scratch:
    where the [B, L, V] logits live in the naive program), argument_bytes,
    output_bytes (includes the [D, V] unembedding gradient, needed by both) and
    peak_bytes = arguments + outputs + temporaries - aliased (an upper bound).
    """

    def chunked(hidden_BxLxD, unembed_DxV, targets_BxL):
        return token_logps(
            hidden_BxLxD, unembed_DxV, targets_BxL, token_chunk=token_chunk, vocab_chunk=vocab_chunk
        )

    return {
        "naive": _compiled_stats(_naive_logps, batch, length, hidden, vocab, dtype),
        "chunked": _compiled_stats(chunked, batch, length, hidden, vocab, dtype),
    }


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("batch", 8), ("length", 2048), ("hidden", 4096), ("vocab", 128256)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    report = logps_memory_report(args.batch, args.length, args.hidden, args.vocab)
    for kind, stats in report.items():
        print(kind, " ".join(f"{k}={v / 2**20:.1f}MiB" for k, v in stats.items()))
    ratio = report["naive"]["temp_bytes"] / report["chunked"]["temp_bytes"]
    print(f"temp ratio naive/chunked = {ratio:.1f}x")


if __name__ == "__main__":
    _main()
