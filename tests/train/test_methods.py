"""Each registered method's objective, in-process, on a tiny model and real batches.

The reference side recomputes every token's log-probability from the model's logits in
float64 NumPy (its own log-softmax), sums them with the batches' masks and applies the
method's formula by hand, so the objective's wiring (which rows, which masks, which
reference) is checked against code that shares none of it. CUT and SparsePO hand those
float64 log-probs to their loss functions, which `tests/losses` checks against float64
references of their own.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignjax.convert.loading import ModelSection, load_model
from alignjax.data.byte_tokenizer import VOCAB_SIZE, make_byte_tokenizer
from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.losses.cut import CUTConfig, cut_loss
from alignjax.models import decoder, head
from alignjax.models.parts import DECODER
from alignjax.core.sharding import MeshSection, make_mesh
from alignjax.train.config import LossSection
from alignjax.train.methods import method_for
from alignjax.train.state import TrainState
from alignjax.train.step import init_counters, make_step_fns

SIZES = {"num_conditions": 0, "num_users": 1, "n_user_tokens": 0}
TOPICS = ["tea", "rain", "maps", "owls", "jazz", "salt"]


@pytest.fixture(scope="module")
def model():
    section = ModelSection(
        preset="tiny",
        preset_overrides={
            "num_hidden_layers": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    )
    loaded = load_model(section, jax.random.key(0), vocab_size=VOCAB_SIZE)
    # A reference that differs from the policy, so margins and ratios are not trivially 0.
    noise = jax.tree.map(
        lambda x, k: 0.05 * jax.random.normal(k, x.shape, x.dtype),
        loaded.params,
        jax.tree.unflatten(
            jax.tree.structure(loaded.params),
            list(jax.random.split(jax.random.key(1), len(jax.tree.leaves(loaded.params)))),
        ),
    )
    ref = jax.tree.map(jnp.add, loaded.params, noise)
    return loaded.cfg, loaded.params, ref


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def _batch(tmp_path, tokenizer, record_type, rows, batch_size):
    path = tmp_path / f"{record_type}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(
        sources=[{"path": str(path)}],
        record_type=record_type,
        max_length=48,
        max_prompt_length=24,
        buckets=[48],
        batch_size=batch_size,
        shuffle=False,
    )
    pipeline = make_pipeline(cfg, tokenizer)
    try:
        return next(pipeline)
    finally:
        pipeline.close()


def _pairs(n):
    return [
        {"prompt": f"About {t}:", "chosen": f" {t} is fine.", "rejected": f" no {t}, ever!"}
        for t in TOPICS[:n]
    ]


def _token_logps64(cfg, params, batch):
    """log p(token t | tokens < t) at column t (0 at t = 0), float64, by NumPy's own log-softmax."""
    hidden = decoder.apply(params, cfg, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL)
    logits = np.asarray(head.logits_BxLxV(params, cfg, hidden), np.float64)[:, :-1]
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, np.asarray(batch.tokens_BxL)[:, 1:, None], -1)[..., 0]
    return np.pad(picked, ((0, 0), (1, 0)))


def _response_mask(batch):
    return (np.asarray(batch.loss_mask_BxL) * (np.asarray(batch.segment_ids_BxL) > 0)).astype(np.float64)


def _run(objective, params, ref, batch, state=None):
    state = objective.init_state() if state is None else state
    value, (metrics, _, _) = objective.fn({DECODER: params}, ref, batch, state, jax.random.key(3))
    return float(value), metrics


def _logsig(x):
    return -np.logaddexp(0.0, -x)


def test_sft_is_token_mean_nll(model, tokenizer, tmp_path):
    cfg, params, _ = model
    rows = [{"prompt": f"Say {t}.", "response": f" {t}!" * (i + 1)} for i, t in enumerate(TOPICS[:3])]
    batch = _batch(tmp_path, tokenizer, "sft", rows, 3)
    loss = LossSection(type="sft")
    value, _ = _run(method_for(loss).build(cfg, loss, SIZES), params, None, batch)
    mask = _response_mask(batch)
    expected = -(_token_logps64(cfg, params, batch) * mask).sum() / mask.sum()
    np.testing.assert_allclose(value, expected, rtol=2e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_family_against_float64_pair_sums(model, tokenizer, tmp_path, loss_type):
    cfg, params, ref = model
    batch = _batch(tmp_path, tokenizer, "preference", _pairs(4), 4)
    loss = LossSection(type=loss_type, beta=0.3)
    value, metrics = _run(method_for(loss).build(cfg, loss, SIZES), params, ref, batch)
    mask = _response_mask(batch)
    p = 4
    sums = (_token_logps64(cfg, params, batch) * mask).sum(-1)
    ref_sums = (_token_logps64(cfg, ref, batch) * mask).sum(-1)
    lengths = mask.sum(-1)
    if loss_type == "sigmoid":
        z = 0.3 * ((sums[:p] - ref_sums[:p]) - (sums[p:] - ref_sums[p:]))
        expected = np.mean(-_logsig(z))
    else:  # TRL's IPO: log-ratios averaged over tokens, squared distance to 1 / (2 beta)
        h = (sums[:p] - ref_sums[:p]) / lengths[:p] - (sums[p:] - ref_sums[p:]) / lengths[p:]
        expected = np.mean((h - 1 / (2 * 0.3)) ** 2)
    np.testing.assert_allclose(value, expected, rtol=5e-5)
    chosen_rewards = 0.3 * (sums[:p] - ref_sums[:p])
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), chosen_rewards.mean(), rtol=5e-5, atol=1e-6)


def test_pdpo_rpo_alpha_adds_the_token_mean_nll_of_the_chosen_with_user_tokens(model, tokenizer, tmp_path):
    cfg, params, ref = model
    rows = [dict(r, user_id=u) for r, u in zip(_pairs(4), ["a", "b", "a", "b"])]
    path = tmp_path / "users.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(
        sources=[{"path": str(path)}],
        max_length=48,
        max_prompt_length=24,
        buckets=[48],
        batch_size=4,
        shuffle=False,
        n_user_tokens=2,
    )
    pipeline = make_pipeline(data, tokenizer)
    batch = next(pipeline)
    pipeline.close()
    sizes = {"num_conditions": 0, "num_users": 3, "n_user_tokens": 2}
    values = {}
    for alpha in (0.0, 0.7):
        pdpo = dataclasses.replace(LossSection().section("pdpo"), n_user_tokens=2, rpo_alpha=alpha)
        loss = LossSection(type="pdpo", sections={"pdpo": pdpo})
        objective = method_for(loss).build(cfg, loss, sizes)
        user_model = objective.init_parts(jax.random.key(5), params)
        state = objective.init_state()
        value, (metrics, _, _) = objective.fn({DECODER: params, **user_model}, ref, batch, state, None)
        values[alpha] = float(value)
    chosen_tokens = _response_mask(batch)[:4].sum()
    nll = -float(metrics["logps/chosen"]) * 4 / chosen_tokens  # logps/chosen: mean summed log-prob
    np.testing.assert_allclose(float(metrics["nll_loss"]), nll, rtol=1e-5)
    np.testing.assert_allclose(values[0.7] - values[0.0], 0.7 * nll, rtol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_pdpo_user_lr_scale_scales_only_the_user_model(scale):
    from alignjax.models.user_model import USER_MODEL_KEY

    pdpo = dataclasses.replace(LossSection().section("pdpo"), n_user_tokens=2, user_lr_scale=scale)
    loss = LossSection(type="pdpo", sections={"pdpo": pdpo})
    objective = method_for(loss).build(None, loss, {"num_users": 3, "n_user_tokens": 2})
    lr = 1e-3
    model_tx = optax.adam(lambda count: lr)
    tx = objective.wrap_optimizer(model_tx, lambda count: lr) if objective.wrap_optimizer else model_tx
    params = {DECODER: {"w": jnp.ones(3)}, USER_MODEL_KEY: {"offsets": jnp.ones(2)}}
    grads = {DECODER: {"w": jnp.full(3, 0.5)}, USER_MODEL_KEY: {"offsets": jnp.full(2, -0.5)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step moves each parameter by its learning rate, against the gradient's sign;
    # no weight decay on the users (it would pull each toward the generic user).
    np.testing.assert_allclose(updates[DECODER]["w"], -lr, rtol=1e-4)
    np.testing.assert_allclose(updates[USER_MODEL_KEY]["offsets"], scale * lr, rtol=1e-4)


def test_pdpo_user_lr_scale_must_be_positive():
    from alignjax.train.methods.pdpo import PDPOSection

    with pytest.raises(ValueError, match="loss.pdpo.user_lr_scale"):
        PDPOSection(user_lr_scale=0.0)


def test_mo_odpo_trains_sigmoid_dpo(model, tokenizer, tmp_path):

    cfg, params, ref = model
    batch = _batch(tmp_path, tokenizer, "preference", _pairs(3), 3)
    mo, sigmoid = LossSection(type="mo_odpo", beta=0.2), LossSection(type="sigmoid", beta=0.2)
    assert method_for(mo).name == "mo_odpo"
    a, _ = _run(method_for(mo).build(cfg, mo, SIZES), params, ref, batch)
    b, _ = _run(method_for(sigmoid).build(cfg, sigmoid, SIZES), params, ref, batch)
    assert a == b


def test_tdpo_against_float64_token_terms(model, tokenizer, tmp_path):
    cfg, params, ref = model
    batch = _batch(tmp_path, tokenizer, "preference", _pairs(3), 3)
    loss = LossSection(type="tdpo", beta=0.2)
    value, _ = _run(method_for(loss).build(cfg, loss, SIZES), params, ref, batch)
    p = 3
    mask = _response_mask(batch)
    d = (_token_logps64(cfg, params, batch) - _token_logps64(cfg, ref, batch)) * mask

    def token_kl(pol, rf):  # KL(reference || policy) per token, float64
        out = []
        for x in (rf, pol):
            hidden = decoder.apply(x, cfg, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL)
            logits = np.asarray(head.logits_BxLxV(x, cfg, hidden), np.float64)[:, :-1]
            shifted = logits - logits.max(-1, keepdims=True)
            out.append(shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)))
        lr, lp = out
        kl = (np.exp(lr) * (lr - lp)).sum(-1)
        return np.pad(kl, ((0, 0), (1, 0)))

    kl = token_kl(params, ref) * mask
    # TDPO (all-ones weights, KL term): -log sigmoid(beta * (sum d_w - sum d_l) - beta * (sum kl_l - sum kl_w))
    u = 0.2 * (d[:p].sum(-1) - d[p:].sum(-1))
    delta = 0.2 * (kl[p:].sum(-1) - kl[:p].sum(-1))
    expected = np.mean(-_logsig(u - delta))
    np.testing.assert_allclose(value, expected, rtol=1e-4)


def test_cut_wires_views_and_judgments(model, tokenizer, tmp_path):
    cfg, params, _ = model
    rows = [
        {"prompt": f"Name {t}.", "response": f" {t}.", "judgment": None if i % 2 else f"Wrong: not {t}."}
        for i, t in enumerate(TOPICS[:4])
    ]
    batch = _batch(tmp_path, tokenizer, "cut", rows, 4)
    loss = LossSection(type="cut")
    value, _ = _run(method_for(loss).build(cfg, loss, SIZES), params, None, batch)
    logps = _token_logps64(cfg, params, batch)
    e = 4
    mask = _response_mask(batch)
    satisfactory = np.asarray(batch.is_satisfactory_E, np.float64)
    np.testing.assert_array_equal(satisfactory, [0, 1, 0, 1])
    expected, _ = cut_loss(
        jnp.asarray(logps[:e]),
        jnp.asarray(logps[e:]),
        jnp.asarray(mask[:e]),
        jnp.asarray(1 - satisfactory),
        CUTConfig(),  # loss.cut's defaults
    )
    np.testing.assert_allclose(value, float(expected), rtol=2e-5)


def _step_fns(objective, params, tx):
    mesh = make_mesh(MeshSection())
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = jax.tree.map(lambda _: replicated, params)
    opt_state = tx.init(params)
    fns = make_step_fns(objective, tx, shardings, jax.tree.map(lambda _: replicated, opt_state))
    return fns, opt_state, mesh


def _state(tree, opt_state, ref, method_state, rng, mesh, step=0, skipped=0):
    counters = init_counters(step, skipped, mesh)
    return TrainState(
        params=tree, opt_state=opt_state, reference=ref, method_state=method_state, counters=counters, rng=rng
    )


def test_accumulated_micro_batches_update_as_their_whole_batch(model, tokenizer, tmp_path):
    cfg, params, ref = model
    loss = LossSection(type="sigmoid", beta=0.5)
    objective = method_for(loss).build(cfg, loss, SIZES)
    tx = optax.sgd(0.5)
    whole = _batch(tmp_path, tokenizer, "preference", _pairs(4), 4)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = _batch(tmp_path / "first", tokenizer, "preference", _pairs(4)[:2], 2)
    second = _batch(tmp_path / "second", tokenizer, "preference", _pairs(4)[2:], 2)
    tree = {DECODER: params}
    rng, micro = jax.random.key(5), [jnp.int32(0), jnp.int32(1)]

    fns, opt_state, mesh = _step_fns(objective, tree, tx)
    state = _state(tree, opt_state, ref, jax.device_put(objective.init_state()), rng, mesh)
    acc, state = fns.first(state, first, micro[0])
    acc, state = fns.accumulate(acc, state, second, micro[1])
    by_micro, metrics = fns.apply(state, acc)

    fns, opt_state, mesh = _step_fns(objective, tree, tx)
    state = _state(tree, opt_state, ref, objective.init_state(), rng, mesh)
    acc, state = fns.first(state, whole, micro[0])
    by_whole, whole_metrics = fns.apply(state, acc)

    # Mean over pairs = mean of the two halves' means: the same gradient, the same update.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), by_micro.params, by_whole.params
    )
    np.testing.assert_allclose(float(metrics["loss"]), float(whole_metrics["loss"]), rtol=1e-5)
    assert int(by_micro.counters["step"]) == 1 and int(by_micro.counters["skipped"]) == 0
    moved = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(by_whole.params), jax.tree.leaves(tree), strict=True)
    )
    assert moved > 1e-4  # the step did update


def test_reference_equal_to_the_policy_gives_exact_zero_margins_in_the_compiled_step(tokenizer, tmp_path):
    """Step 1 of a stage (reference = the policy): rewards, margins and accuracy exactly 0
    and the loss exactly ln 2, from the compiled step that also takes gradients; with a
    reference that differs, the reference forward runs and margins are not 0."""
    # The quickstart's model size: at the fixture's smaller one XLA happens to fuse the two
    # forwards alike, and the check could not fail.
    loaded = load_model(ModelSection(preset="tiny"), jax.random.key(0), vocab_size=VOCAB_SIZE)
    cfg, params = loaded.cfg, loaded.params
    ref = load_model(ModelSection(preset="tiny"), jax.random.key(1), vocab_size=VOCAB_SIZE).params
    loss = LossSection(type="sigmoid", beta=0.1)
    objective = method_for(loss).build(cfg, loss, SIZES)
    rows = [
        {
            "prompt": f"Tell me about the tea number {i}.",
            "chosen": f" The tea is fine and calm, really {i}.",
            "rejected": f" no tea ever, never {i}!",
        }
        for i in range(6)
    ]
    batch = _batch(tmp_path, tokenizer, "preference", rows, 6)
    tree = {DECODER: params}
    fns, _, mesh = _step_fns(objective, tree, optax.sgd(0.1))
    copy = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    run = lambda r: fns.first(  # noqa: E731
        _state(tree, None, r, objective.init_state(), jax.random.key(0), mesh), batch, jnp.int32(0)
    )[0]["metrics"]
    same = run(copy)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert float(same[key]) == 0.0, key
    assert float(same["loss"]) == float(np.float32(np.log(2.0)))
    other = run(ref)
    assert abs(float(other["rewards/margins"])) > 1e-4


def test_non_finite_step_changes_nothing_and_is_counted(model, tokenizer, tmp_path):
    cfg, params, ref = model
    loss = LossSection(type="sigmoid")
    objective = method_for(loss).build(cfg, loss, SIZES)
    batch = _batch(tmp_path, tokenizer, "preference", _pairs(2), 2)
    tree = {DECODER: dict(params, final_norm=jax.tree.map(lambda x: x * jnp.nan, params["final_norm"]))}
    tx = optax.adam(1e-2)
    fns, opt_state, mesh = _step_fns(objective, tree, tx)
    before = jax.tree.map(np.asarray, (tree, opt_state))
    state = _state(tree, opt_state, ref, objective.init_state(), jax.random.key(0), mesh, step=7, skipped=2)
    acc, state = fns.first(state, batch, jnp.int32(0))
    new, _ = fns.apply(state, acc)
    after = jax.tree.map(np.asarray, (new.params, new.opt_state))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), before, after)
    assert (int(new.counters["step"]), int(new.counters["skipped"])) == (8, 3)


def test_unknown_loss_type_names_the_registered_methods():
    with pytest.raises(
        ValueError, match=r"loss.type='nope' names no registered method \(registered: .*sparsepo"
    ):
        LossSection(type="nope")


def test_method_sections_are_config_keys_with_suggestions():
    from alignjax.core import configlib

    loss = configlib.from_dict(LossSection, {"type": "sparsepo", "sparsepo": {"weights": "given"}}, "loss")
    assert loss.section("sparsepo").weights == "given"
    assert loss.section("pdpo") == dataclasses.replace(loss.section("pdpo"))  # defaults when not given
    assert configlib.to_dict(loss)["sparsepo"]["weights"] == "given"
    with pytest.raises(
        configlib.ConfigError, match=r"unknown config key 'loss.sparspo'; did you mean 'sparsepo'"
    ):
        configlib.from_dict(LossSection, {"sparspo": {}}, "loss")


def _lora_cases(tmp_path, tokenizer):
    pairs = _batch(tmp_path / "pairs", tokenizer, "preference", _pairs(3), 3)
    sft = _batch(
        tmp_path / "sft",
        tokenizer,
        "sft",
        [{"prompt": f"Say {t}.", "response": f" {t}!"} for t in TOPICS[:3]],
        3,
    )
    cut_rows = [
        {"prompt": f"Name {t}.", "response": f" {t}.", "judgment": None if i % 2 else f"Wrong: not {t}."}
        for i, t in enumerate(TOPICS[:4])
    ]
    cut = _batch(tmp_path / "cut", tokenizer, "cut", cut_rows, 4)
    unpaired_rows = [
        {"prompt": f"Name {t}.", "completion": f" {t}.", "label": i % 2 == 0}
        for i, t in enumerate(TOPICS[:3])
    ]
    unpaired = _batch(tmp_path / "unpaired", tokenizer, "unpaired", unpaired_rows, 4)
    return {
        "sft": (LossSection(type="sft"), sft),
        "sigmoid": (LossSection(type="sigmoid", beta=0.2), pairs),
        "tdpo": (LossSection(type="tdpo", beta=0.2), pairs),
        "sparsepo": (LossSection(type="sparsepo", beta=0.2), pairs),
        "cut": (LossSection(type="cut"), cut),
        # KTO: its reference (the base) and its KL rows (prompt i with completion i - 1).
        "kto": (LossSection(type="kto", beta=0.2), unpaired),
    }


@pytest.mark.parametrize("name", ["sft", "sigmoid", "tdpo", "sparsepo", "cut", "kto"])
def test_every_method_trains_adapters_on_the_frozen_base(model, tokenizer, tmp_path, name):
    """With fresh adapters (B = 0) a LoRA objective is the full-weight objective at the base,
    value and parts' gradients alike; the adapters' B (only) gets a gradient, the base none
    (it is not an argument of the differentiated function), and moving B moves the loss."""
    from alignjax.models.parts import LORA

    for d in ("pairs", "sft", "cut", "unpaired"):
        (tmp_path / d).mkdir()
    loss, batch = _lora_cases(tmp_path, tokenizer)[name]
    cfg, params, _ = model
    lora_cfg = dataclasses.replace(cfg, lora_rank=2, lora_targets=("q", "v", "down"), lora_scale=2.0)
    full = method_for(loss).build(cfg, loss, SIZES)
    adapted = method_for(loss).build(lora_cfg, loss, SIZES)
    parts = full.init_parts(jax.random.key(4), params)
    adapters = decoder.init_adapters(lora_cfg, jax.random.key(5))
    rng, state = jax.random.key(3), full.init_state()

    def value(objective, tree, ref):
        return jax.value_and_grad(lambda t: objective.fn(t, ref, batch, state, rng)[0])(tree)

    ref_value, ref_grads = value(full, {DECODER: params, **parts}, params)
    got, grads = value(adapted, {LORA: adapters, **parts}, params)
    np.testing.assert_allclose(float(got), float(ref_value), rtol=1e-6, atol=1e-7)
    for part in parts:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads[part], ref_grads[part]
        )
    b_norm = sum(float(jnp.sum(g["b"] ** 2)) for layer in grads[LORA].values() for g in layer.values())
    a_norm = sum(float(jnp.sum(g["a"] ** 2)) for layer in grads[LORA].values() for g in layer.values())
    assert b_norm > 0 and a_norm == 0.0  # B = 0: A's gradient passes through B
    moved = jax.tree.map(lambda x: x + 0.05, adapters)
    changed, _ = value(adapted, {LORA: moved, **parts}, params)
    assert abs(float(changed) - float(got)) > 1e-5
