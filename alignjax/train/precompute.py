"""Precomputed reference log-probs: `alignjax precompute-ref CONFIG [key=value ...]`.

With `loss.reference: precomputed`, a DPO-family stage holds no reference model: its
reference log-probs (summed over each response) are computed once, here, for every
record of `data.train` and of each eval set, and the trainer looks them up per pair by
record key (`PairBatch.record_key_P`). That saves the reference's parameters in device
memory and its forward pass in every step.

A table is valid for one model and one data set only, so its file is named by a
fingerprint of both, and a trainer whose config has drifted finds no table of its own
name and says what changed:

  <run_dir>/reference_logps/<fingerprint>.npz   record_key_N, chosen_N, rejected_N
  <run_dir>/reference_logps/<fingerprint>.json  what the fingerprint was made of

  model: the HF config.json, the compute and parameter dtypes, and a digest of the
         parameter values the stage starts from;
  data:  each source's content in pipeline order (sha256; above 64 MiB, the size and
         64 evenly spaced blocks), the tokenizer, and every data.* key that changes
         the tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignjax import sharding
from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.data.records import split_record_key
from alignjax.data.sources import open_sources
from alignjax.models import decoder
from alignjax.train import evaluation, loop, objectives
from alignjax.train.multihost import everywhere, global_batch, to_host
from alignjax.train.config import (
    LossSection,
    Stage,
    TrainConfig,
    data_config,
    resolve_builtin_paths,
    sources_from,
)

log = logging.getLogger("alignjax.precompute")

TABLE_DIR = "reference_logps"
# Larger files are identified by their size and a hash of evenly spaced blocks: reading
# all of them at every start of training would cost more than it protects against.
# Content, not modification times: hosts that each hold a copy must agree.
_HASH_LIMIT_BYTES = 64 * 2**20
_SAMPLED_BLOCKS, _BLOCK_BYTES = 64, 64 * 2**10
# data.* keys that change the tokens a record becomes. The others change batching or
# order only, which the summed log-probs do not depend on beyond float rounding.
TOKENISATION_KEYS = (
    "record_type",
    "max_length",
    "max_prompt_length",
    "truncation_mode",
    "templates",
    "chat_template",
    "n_user_tokens",
    "user_slot_token_id",
    "condition_field",
)


def uses_table(loss: LossSection) -> bool:
    """Whether a stage with this loss reads precomputed reference log-probs."""
    return (
        loss.reference == "precomputed"
        and loss.stage_kind == "preference"
        and (objectives.dpo_config(loss).needs_reference)
    )


# --- fingerprints ---------------------------------------------------------------------


def _bits_u32(x):
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[jnp.dtype(x.dtype).itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_sums(x):
    """Two sums of the value bits times odd, position-dependent weights, modulo 2^32.

    Integer sums are exact in any order, so the digest does not depend on how the
    parameters are sharded; and with odd weights, changing any one value changes both.
    """
    bits = _bits_u32(x)
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= x.shape[axis]
    w1 = (index * jnp.uint32(2654435761)) | jnp.uint32(1)
    w2 = ((index ^ jnp.uint32(0x9E3779B9)) * jnp.uint32(2246822519)) | jnp.uint32(1)
    return jnp.stack([jnp.sum(bits * w1, dtype=jnp.uint32), jnp.sum(bits * w2, dtype=jnp.uint32)])


def params_digest(params, mesh) -> str:
    """A digest of the parameter values (and tree paths, shapes, dtypes), from device arrays."""
    sums = jax.jit(lambda p: jax.tree.map(_leaf_sums, p), out_shardings=sharding.replicated(mesh))(params)
    parts = [
        (jax.tree_util.keystr(path), list(x.shape), str(x.dtype), np.asarray(s.addressable_data(0)).tolist())
        for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(sums))
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def model_identity(hf_config: dict, model_cfg, params, mesh) -> dict:
    return {
        "hf_config": hf_config,
        "dtype": model_cfg.dtype,
        "param_dtype": model_cfg.param_dtype,
        "params": params_digest(params, mesh),
    }


def _file_identity(path: str) -> dict:
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _HASH_LIMIT_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return {"sha256": digest.hexdigest()}
        for offset in np.linspace(0, size - _BLOCK_BYTES, _SAMPLED_BLOCKS).astype(np.int64).tolist():
            f.seek(offset)
            digest.update(f.read(_BLOCK_BYTES))
    return {"size": size, "sampled_sha256": digest.hexdigest()}


def _source_identity(source) -> dict:
    out = {"records": len(source)}
    path = getattr(source, "path", None)
    if path is None or not os.path.exists(path):  # TFDS: a dataset name, not a path
        return {
            **out,
            "name": getattr(source, "name", repr(source)),
            "split": getattr(source, "split", None),
            "data_dir": getattr(source, "data_dir", None),
        }
    out["name"] = os.path.basename(path.rstrip("/"))
    if os.path.isfile(path):
        return {**out, **_file_identity(path)}
    files = sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)
    parts = [(name, _file_identity(os.path.join(path, name))) for name in files]
    return {
        **out,
        "split": getattr(source, "split", None),
        "files": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(),
    }


def _tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [
        type(tokenizer).__name__,
        backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())),
        getattr(tokenizer, "chat_template", None),
        {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_identity(cfg: DataConfig, tokenizer) -> dict:
    """What decides the tokens of every record: the sources, the tokenizer, and the data.* keys."""
    sources = []
    for i, s in enumerate(cfg.sources):
        sources += [_source_identity(src) for src in open_sources(s, f"data.sources[{i}]")]
    keys = {k: getattr(cfg, k) for k in TOKENISATION_KEYS}
    keys["templates"] = dataclasses.asdict(cfg.templates)
    return {"sources": sources, "tokenizer": _tokenizer_identity(tokenizer), **keys}


def fingerprint(model_id: dict, data_id: dict) -> str:
    blob = json.dumps({"model": model_id, "data": data_id}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _differences(old, new, key: str) -> list[str]:
    """Human-readable `key: old -> new` lines where two identities differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d for k in sorted(set(old) | set(new)) for d in _differences(old.get(k), new.get(k), f"{key}.{k}")
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{key}[{i}]")]
    if old == new:
        return []
    old_text, new_text = json.dumps(old, default=str), json.dumps(new, default=str)
    if max(len(old_text), len(new_text)) > 60:  # digests, long templates: naming the key is enough
        return [f"{key} changed"]
    return [f"{key}: {old_text} -> {new_text}"]


# --- data sets -------------------------------------------------------------------------


def eval_label(name: str) -> str:
    """The table label of eval set `name` (see `evaluation.eval_sets`)."""
    return "data.eval" if name == "eval" else f"data.eval.{name}"


def data_sets(stage_cfg: TrainConfig, data_dir: str | None, batch_size: int) -> list[tuple[str, DataConfig]]:
    """(label, DataConfig) of the stage's train set and each eval set, read once in file order.

    Every source weight is 1, so each record is read exactly once whatever the training
    mixture: a record the trainer draws twice (weight 2) or sometimes (weight 0.5) has the
    same key, and so the same entry, every time.
    """
    if stage_cfg.data.train is None:
        raise ValueError("data.train is not set (a path, a list of paths, or builtin:NAME)")
    sets = [("data.train", sources_from(resolve_builtin_paths(stage_cfg.data.train, data_dir), "data.train"))]
    sets += [
        (eval_label(name), sources_from(paths, eval_label(name)))
        for name, paths in evaluation.eval_sets(stage_cfg, data_dir).items()
    ]
    return [
        (
            label,
            data_config(
                stage_cfg.data,
                [dataclasses.replace(s, weight=1.0) for s in sources],
                batch_size,
                shuffle=False,
                num_epochs=1,
            ),
        )
        for label, sources in sets
    ]


# --- tables ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReferenceTable:
    path: str
    record_key_N: np.ndarray  # int64, sorted
    chosen_N: np.ndarray  # float32, reference log-prob of the chosen response (summed)
    rejected_N: np.ndarray  # float32
    sources: tuple[str, ...]  # source names in pipeline order, to name a missing record
    command: str

    def attach(self, batch):
        """The batch with `ref_chosen_logps_P` / `ref_rejected_logps_P` looked up by record key."""
        keys_P = batch.record_key_P
        if keys_P is None:
            raise ValueError(
                "loss.reference=precomputed needs record keys in the batch; this data source has none"
            )
        at_P = np.minimum(np.searchsorted(self.record_key_N, keys_P), max(len(self.record_key_N) - 1, 0))
        found_P = (
            self.record_key_N[at_P] == keys_P if len(self.record_key_N) else np.zeros(keys_P.shape, bool)
        )
        missing_P = (batch.pair_valid_P > 0) & ~found_P
        if missing_P.any():
            key = int(keys_P[np.argmax(missing_P)])
            source, row = split_record_key(key)
            name = self.sources[source] if 0 <= source < len(self.sources) else f"source {source}"
            raise ValueError(
                f"{self.path}: no reference log-probs for the pair from {name} row {row} (record key {key}); "
                f"the table does not cover the data this run reads. Run `{self.command}` again"
            )
        return dataclasses.replace(
            batch,
            ref_chosen_logps_P=np.where(found_P, self.chosen_N[at_P], 0.0).astype(np.float32),
            ref_rejected_logps_P=np.where(found_P, self.rejected_N[at_P], 0.0).astype(np.float32),
        )


def table_path(run_dir: str, fp: str) -> str:
    return os.path.join(run_dir, TABLE_DIR, f"{fp}.npz")


def load_table(run_dir: str, model_id: dict, data_id: dict, *, what: str, command: str) -> ReferenceTable:
    """The table for this model and data, or an error that says what to run (and what changed)."""
    fp = fingerprint(model_id, data_id)
    path = table_path(run_dir, fp)
    names = tuple(s["name"] for s in data_id["sources"])
    if os.path.exists(path):
        with np.load(path) as f:
            return ReferenceTable(path, f["record_key_N"], f["chosen_N"], f["rejected_N"], names, command)
    message = f"{what}: loss.reference=precomputed, but there is no table {path} for its model and data"
    stale = _closest_table(os.path.dirname(path), what, {"model": model_id, "data": data_id})
    if stale is not None:
        other, changes = stale
        message += f"; the table written for it before ({other}) is stale: " + "; ".join(changes[:6])
    raise ValueError(f"{message}. Run `{command}` to compute it, then train again")


def _closest_table(directory: str, what: str, identity: dict):
    """(path, differences) of the newest table written for the same stage and set, if any."""
    if not os.path.isdir(directory):
        return None
    described = []
    for name in os.listdir(directory):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(directory, name)) as f:
            info = json.load(f)
        if info.get("what") == what:
            described.append((os.path.getmtime(os.path.join(directory, name)), name, info))
    if not described:
        return None
    _, name, info = max(described)
    changes = _differences({"model": info["model"], "data": info["data"]}, identity, "")
    return os.path.join(directory, name[: -len(".json")] + ".npz"), [c.lstrip(".") for c in changes]


def write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)


def _write_table(path: str, keys_N, chosen_N, rejected_N, description: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, record_key_N=keys_N, chosen_N=chosen_N, rejected_N=rejected_N)
    # The description first: a table without one would still be found, but not explained.
    write_json(path[: -len(".npz")] + ".json", description)
    os.replace(tmp, path)


# --- computing a table -----------------------------------------------------------------


def _gather(x_P: np.ndarray) -> np.ndarray:
    """Every process's per-pair values, in process order (int64 travels as int32 pairs:
    JAX without x64 would truncate it)."""
    if jax.process_count() == 1:
        return x_P
    from jax.experimental import multihost_utils

    if x_P.dtype == np.int64:
        halves = np.ascontiguousarray(x_P).view(np.int32)
        return np.asarray(multihost_utils.process_allgather(halves, tiled=True)).view(np.int64)
    return np.asarray(multihost_utils.process_allgather(x_P, tiled=True))


def compute_table(params, model_cfg, loss: LossSection, dcfg: DataConfig, tokenizer, mesh, pad_id: int):
    """(record_key_N sorted, chosen_N, rejected_N): the reference's summed log-probs of every pair."""

    def sums(p, batch):
        logps = objectives._pair_logps(p, model_cfg, loss, batch)
        return logps.chosen_logps_B, logps.rejected_logps_B

    sums_fn = jax.jit(sums)
    keys, chosen, rejected = [], [], []
    last = None
    with make_pipeline(dcfg, tokenizer) as pipeline:
        while True:
            local = next(pipeline, None)
            # Processes step together (each step is one computation over all of them); one whose
            # shard ran out first feeds a copy of its last batch with every pair marked padding.
            if not _anywhere(local is not None):
                break
            if local is None:
                if last is None:
                    raise ValueError(
                        f"process {jax.process_index()} read no records of this data set; "
                        "use fewer processes or more data"
                    )
                local = dataclasses.replace(
                    last,
                    pair_valid_P=np.zeros_like(last.pair_valid_P),
                    record_key_P=np.zeros_like(last.record_key_P),
                )
            last = local
            chosen_P, rejected_P = sums_fn(params, global_batch(local, mesh, pad_id))
            valid_P = _gather(local.pair_valid_P) > 0
            keys.append(_gather(local.record_key_P)[valid_P])
            chosen.append(to_host(chosen_P)[valid_P])
            rejected.append(to_host(rejected_P)[valid_P])
    keys_N = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    order = np.argsort(keys_N, kind="stable")
    keys_N = keys_N[order]
    if len(keys_N) > 1 and np.any(keys_N[1:] == keys_N[:-1]):
        raise AssertionError("a record was read twice in one pass over the data")
    cat = lambda parts: (np.concatenate(parts) if parts else np.zeros(0, np.float32))[order].astype(
        np.float32
    )  # noqa: E731
    return keys_N, cat(chosen), cat(rejected)


def _anywhere(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    return not everywhere(not flag)


def _starting_params(cfg: TrainConfig, stage: Stage, index: int, initial_params):
    """The parameters a stage starts from: the model section's for the first stage, else the
    checkpoint the stages before it ended with."""
    if index == 0:
        return initial_params
    from alignjax.convert import model_checkpoint as mc

    root = os.path.abspath(os.path.join(cfg.run_dir, "checkpoints"))
    step = stage.first_step
    if not os.path.isdir(os.path.join(root, str(step), "params")):
        raise ValueError(
            f"stage {stage.name!r} starts from the model the stages before it train (checkpoint step {step}), "
            f"but {root}/{step} does not exist yet: run `alignjax train` first; it stops when stage "
            f"{stage.name!r} starts and asks for this table, and resumes there once it is written"
        )
    restored = mc.load_params(root, step, as_numpy=True)
    return {k: restored[k] for k in initial_params}


def precompute(cfg: TrainConfig) -> list[str]:
    """Write the missing tables of every stage that uses them; returns the table paths."""
    from alignjax.data.byte_tokenizer import VOCAB_SIZE
    from alignjax.models.loading import load_model
    from alignjax.train.config import stages

    todo = [(i, s) for i, s in enumerate(stages(cfg)) if uses_table(s.config.loss)]
    if not todo:
        raise ValueError(
            "no stage has loss.reference: precomputed with a loss that needs a reference "
            "(the DPO family, e.g. loss.type: sigmoid); there is nothing to precompute"
        )
    sharding.maybe_initialize_distributed()
    os.makedirs(cfg.run_dir, exist_ok=True)
    mesh = sharding.make_mesh(cfg.mesh)
    data_dir = loop.prepare_builtin_data(cfg)
    # As the trainer loads it: the same seed gives a preset the same initial parameters.
    loaded = load_model(
        cfg.model, jax.random.key(cfg.seed), vocab_size=VOCAB_SIZE if cfg.model.preset else None
    )
    tokenizer, _ = loop.tokenizer_for(loaded, cfg.run_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    shapes = jax.eval_shape(lambda p: p, loaded.params)
    shardings = sharding.tree_shardings(decoder.logical_axes(loaded.cfg), shapes, mesh)
    written = []
    for index, stage in todo:
        scfg = stage.config
        params = jax.device_put(_starting_params(cfg, stage, index, loaded.params), shardings)
        model_id = model_identity(loaded.meta["hf_config"], loaded.cfg, params, mesh)
        batch_size = scfg.train.batch_size // scfg.train.grad_accum
        for label, dcfg in data_sets(scfg, data_dir, batch_size):
            data_id = data_identity(dcfg, tokenizer)
            fp = fingerprint(model_id, data_id)
            path = table_path(cfg.run_dir, fp)
            what = f"stage {stage.name!r} {label}"
            if os.path.exists(path):
                log.info("%s: %s is up to date", what, path)
                written.append(path)
                continue
            log.info("%s: computing reference log-probs -> %s", what, path)
            keys_N, chosen_N, rejected_N = compute_table(
                params, loaded.cfg, scfg.loss, dcfg, tokenizer, mesh, pad_id
            )
            if jax.process_index() == 0:
                _write_table(
                    path,
                    keys_N,
                    chosen_N,
                    rejected_N,
                    {
                        "fingerprint": fp,
                        "what": what,
                        "records": len(keys_N),
                        "model": model_id,
                        "data": data_id,
                    },
                )
            log.info("%s: %d pairs", what, len(keys_N))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="alignjax precompute-ref",
        description="Compute the reference log-probs of the stages with loss.reference: precomputed, once.",
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="the same overrides as for train")
    args = parser.parse_args(argv)
    from alignjax.train.config import load_config

    # force: importing Orbax lets absl configure logging first, which would hide INFO lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    try:
        paths = precompute(load_config(args.config, args.overrides))
    except (ValueError, FileNotFoundError, KeyError) as e:  # configlib.ConfigError is a ValueError
        print(f"alignjax precompute-ref: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"reference log-probs: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
