"""DPO steps on a tiny model, unsharded and with rows split over `mesh.sequence`.

Run as a script on 8 simulated CPU devices (the test sets XLA_FLAGS):
    python sequence_parallel_run.py '<json list of variants>' OUT.json
Each variant names a family, a batch layout (right / left padding, packed), a mesh and a
strategy, optionally an attention backend (splash_interpret: splash inside each shard; the
unsharded run keeps the XLA einsum) and a row length, and optionally a method (sigmoid DPO unless `method` says sparsepo: SparsePO with
the token KL and reference-activation weights; pdpo: P-DPO's soft user tokens; cut: CUT's
two views); the script writes each variant's per-step losses, and for variants that ask,
the first step's gradients' largest difference from the unsharded run's. A variant with
`precompute` instead writes precompute-ref's table of the reference's pair sums, and
whether attention ran across the sequence shards.
"""

import dataclasses
import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hf_models import FAMILY_CONFIGS

from alignjax.core import sharding
from alignjax.data.byte_tokenizer import VOCAB_SIZE, make_byte_tokenizer
from alignjax.data.config import DataConfig
from alignjax.data.load_tokenizer import tokenizer_pad_id
from alignjax.data.pipeline import make_pipeline
from alignjax.models import blockwise, decoder
from alignjax.models import sequence_parallel as sp
from alignjax.models import splash
from alignjax.models.families import model_config_from_hf
from alignjax.models.parts import DECODER
from alignjax.core.sharding import MeshSection, make_mesh
from alignjax.train.config import LossSection
from alignjax.train.methods import method_for
from alignjax.commands.precompute_ref import compute_table
from alignjax.train.stage import opt_state_shardings
from alignjax.train.state import TrainState
from alignjax.train.step import init_counters, make_step_fns

STEPS = 10
SIZES = {"num_conditions": 0, "num_users": 1, "n_user_tokens": 0}
USER_TOKENS = 2
USERS = ["ann", "bob"]
LENGTH = 64  # rows of 64 tokens: 16 per shard at mesh.sequence=4, two tiles of 8
WORDS = ["tea", "rain", "maps", "owls", "jazz", "salt", "figs", "moss"]


def _records(method: str):
    if method == "cut":  # every other answer judged wrong: both CUT terms have tokens
        return [
            {
                "prompt": f"Tell me about {w} in a sentence or two.",
                "response": f" {w.capitalize()} is quiet and fine.",
                "judgment": None if i % 2 else f"Wrong: {w} is loud.",
            }
            for i, w in enumerate(WORDS)
        ]
    return [
        {
            "prompt": f"Tell me about {w} in a sentence or two.",
            "chosen": f" {w.capitalize()} is quiet and fine; people like {w} a lot.",
            "rejected": f" no {w}" + " ever" * (i % 3 + 1) + "!",
            **({"user_id": USERS[i % 2]} if method == "pdpo" else {}),
        }
        for i, w in enumerate(WORDS)
    ]


def batches(tmp_dir: str, layout: str, method: str = "dpo", length: int = LENGTH):
    path = f"{tmp_dir}/{method}.jsonl"
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in _records(method))
    packed = layout == "packed"
    cfg = DataConfig(
        sources=[{"path": path}],
        record_type="cut" if method == "cut" else "preference",
        n_user_tokens=USER_TOKENS if method == "pdpo" else 0,
        max_length=length // 2 if packed else length,
        max_prompt_length=24,
        buckets=[length],
        packing=packed,
        pack_length=length if packed else None,
        max_sequences_per_row=4,
        batch_size=2 if packed else 4,
        shuffle=False,
        num_epochs=None,
    )
    pipeline = make_pipeline(cfg, make_byte_tokenizer())
    try:
        out = [next(pipeline) for _ in range(2)]
    finally:
        pipeline.close()
    if layout == "left":
        out = [_left_padded(b) for b in out]
    return out


def _left_padded(batch):
    """The same rows with their padding moved to the front."""
    seg = np.asarray(batch.segment_ids_BxL)
    shift = (seg == 0).sum(axis=1)
    roll = lambda x: np.stack([np.roll(row, s) for row, s in zip(np.asarray(x), shift)])
    return dataclasses.replace(
        batch,
        tokens_BxL=roll(batch.tokens_BxL),
        positions_BxL=roll(batch.positions_BxL),
        segment_ids_BxL=roll(batch.segment_ids_BxL),
        loss_mask_BxL=roll(batch.loss_mask_BxL),
    )


def model(family: str, scan: bool):
    hf = dict(FAMILY_CONFIGS[family], vocab_size=VOCAB_SIZE)
    cfg = model_config_from_hf(hf, scan_layers=scan, remat_policy="minimal" if scan else "none")
    params = decoder.init_params(cfg, jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), len(jax.tree.leaves(params)))
    noise = jax.tree.unflatten(jax.tree.structure(params), list(keys))
    ref = jax.tree.map(lambda x, k: x + 0.05 * jax.random.normal(k, x.shape, x.dtype), params, noise)
    # Host copies: a run's steps donate the device buffers they are given.
    return cfg, jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, ref)


def objective_for(cfg, method: str):
    """The method's objective and sizes; token_chunk 32 splits each row into two chunks."""
    if method == "sparsepo":
        section = dataclasses.replace(LossSection().section("sparsepo"), kl=True, weights="activations")
        loss = LossSection(type="sparsepo", beta=0.1, token_chunk=32, sections={"sparsepo": section})
    elif method == "pdpo":
        section = dataclasses.replace(LossSection().section("pdpo"), n_user_tokens=USER_TOKENS)
        loss = LossSection(type="pdpo", beta=0.1, token_chunk=32, sections={"pdpo": section})
    else:
        loss = LossSection(type="cut" if method == "cut" else "sigmoid", beta=0.1, token_chunk=32)
    sizes = dict(SIZES, num_users=len(USERS) + 1, n_user_tokens=USER_TOKENS) if method == "pdpo" else SIZES
    return method_for(loss).build(cfg, loss, sizes)


def train(cfg, params, ref, data, mesh, first_grads: bool, method: str = "dpo"):
    objective = objective_for(cfg, method)
    tx = optax.adam(3e-4)
    # A method's own parts (P-DPO's user model) are small and replicated, as the trainer has them.
    parts = jax.tree.map(np.asarray, objective.init_parts(jax.random.key(3), params))
    tree = {DECODER: params, **parts}
    shapes = jax.eval_shape(lambda p: p, tree)
    param_sh = {DECODER: sharding.tree_shardings(decoder.logical_axes(cfg), shapes[DECODER], mesh)}
    param_sh.update(jax.tree.map(lambda _: sharding.replicated(mesh), parts))
    opt_sh = opt_state_shardings(tx, jax.eval_shape(tx.init, shapes), param_sh, mesh)
    fns = make_step_fns(objective, tx, param_sh, opt_sh)
    with jax.set_mesh(mesh):
        tree = jax.device_put(tree, param_sh)
        ref = jax.device_put(ref, param_sh[DECODER])
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(tree)
        state = TrainState(
            params=tree,
            opt_state=opt_state,
            reference=ref,
            method_state=objective.init_state(),
            counters=init_counters(0, 0, mesh),
            rng=jax.random.key(2),
        )
        losses, grads = [], None
        for step in range(STEPS):
            batch = sharding.global_batch(data[step % len(data)], mesh)
            acc, state = fns.first(state, batch, jnp.int32(0))
            if step == 0 and first_grads:
                grads = jax.tree.map(np.asarray, acc["grads"])
            state, metrics = fns.apply(state, acc)
            losses.append(float(metrics["loss"]))
    return losses, grads


def reference_table(cfg, ref, tmp_dir: str, mesh):
    """precompute-ref's (keys, chosen sums, rejected sums) of the DPO pairs, and how many
    attention calls ran sequence-parallel while it traced."""
    path = f"{tmp_dir}/table.jsonl"
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in _records("dpo"))
    dcfg = DataConfig(
        sources=[{"path": path}],
        max_length=LENGTH,
        max_prompt_length=24,
        buckets=[LENGTH],
        batch_size=4,
        shuffle=False,
        num_epochs=1,
    )
    loss = LossSection(type="sigmoid", beta=0.1, token_chunk=32)
    shapes = jax.eval_shape(lambda p: p, ref)
    params = jax.device_put(ref, sharding.tree_shardings(decoder.logical_axes(cfg), shapes, mesh))
    calls, attention = [], sp.attention
    sp.attention = lambda *a, **k: calls.append(1) or attention(*a, **k)
    try:
        tokenizer = make_byte_tokenizer()
        table = compute_table(params, cfg, loss, dcfg, tokenizer, mesh, tokenizer_pad_id(tokenizer))
    finally:
        sp.attention = attention
    return [np.asarray(x).tolist() for x in table], len(calls)


def main():
    variants, out_path = json.loads(sys.argv[1]), sys.argv[2]
    # Two query and two key tiles per shard: the tile loops and their skips run.
    blockwise.DEFAULT_TILE = 8
    results, unsharded = [], {}
    devices = jax.devices()
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            cfg, params, ref = model(v["family"], v.get("scan", False))
            cfg = cfg.replace(sequence_parallel=v["strategy"], sequence_load_balance=v.get("balance", True))
            if v.get("precompute"):
                one = make_mesh(MeshSection(fsdp=1), devices[:1])
                mesh = make_mesh(MeshSection(**v["mesh"]), devices[: v["devices"]])
                want, _ = reference_table(cfg, ref, tmp, one)
                got, calls = reference_table(cfg, ref, tmp, mesh)
                row = dict(v, table=got, unsharded_table=want, sequence_parallel_calls=calls)
                results.append(row)
                print(json.dumps(row), flush=True)
                continue
            method = v.get("method", "dpo")
            length = v.get("length", LENGTH)
            data = batches(tmp, v["layout"], method, length)
            key = (v["family"], v.get("scan", False), v["layout"], method, length)
            if key not in unsharded:
                one = make_mesh(MeshSection(fsdp=1), devices[:1])
                unsharded[key] = train(cfg, params, ref, data, one, True, method)
            mesh = make_mesh(MeshSection(**v["mesh"]), devices[: v["devices"]])
            sharded_cfg = cfg.replace(attention_backend=v.get("backend", "xla"))
            calls, apply = [], splash.apply
            splash.apply = lambda *a, **k: calls.append(1) or apply(*a, **k)
            try:
                losses, grads = train(sharded_cfg, params, ref, data, mesh, v.get("grads", False), method)
            finally:
                splash.apply = apply
            ref_losses, ref_grads = unsharded[key]
            row = dict(v, losses=losses, unsharded_losses=ref_losses, splash_calls=len(calls))
            if grads is not None:
                diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), grads, ref_grads)
                scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
                row["grad_max_abs_diff"] = max(jax.tree.leaves(diffs))
                row["grad_max_abs"] = scale
            results.append(row)
            print(json.dumps(row), flush=True)
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
