"""P-DPO user model: the three forms against NumPy, id clamping, vocabulary init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.models.user_model import (
    UserModel,
    clamp_user_ids,
    soft_token_index,
    vocab_rows_init,
)

U, T, D, K, V = 5, 3, 4, 2, 50
IDS = np.array([0, 2, 4, 7, -3, 1])  # 7 and -3 were never seen: generic user


def _vocab():
    return np.random.default_rng(0).normal(size=(V, D)).astype(np.float32)


def _randomised(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: np.asarray(rng.normal(size=x.shape)), params)


def test_clamp_user_ids():
    np.testing.assert_array_equal(clamp_user_ids(jnp.asarray(IDS), U), [0, 2, 4, 0, 0, 1])


def test_soft_token_index_follows_bos():
    np.testing.assert_array_equal(soft_token_index(jnp.array([0, 3]), 3), [[1, 2, 3], [4, 5, 6]])


def _apply(form, seed=1):
    model = UserModel(
        num_users=U,
        width=D,
        num_tokens=T,
        form=form,
        num_clusters=K,
        token_init=vocab_rows_init(jnp.asarray(_vocab())),
    )
    params = model.init(jax.random.key(0), jnp.asarray(IDS))["params"]
    params = _randomised(params, seed)
    return params, np.asarray(model.apply({"params": params}, jnp.asarray(IDS)))


def test_individual_form_is_generic_plus_offset():
    params, got = _apply("individual")
    ids = np.where((IDS >= 0) & (IDS < U), IDS, 0)
    offsets = np.where((ids != 0)[:, None, None], params["offsets"][ids], 0.0)
    np.testing.assert_allclose(got, params["generic"][None] + offsets, rtol=1e-6)
    np.testing.assert_allclose(got[3], params["generic"], rtol=1e-6)  # unseen -> e_0


def test_direct_form_is_a_table_lookup():
    params, got = _apply("direct")
    np.testing.assert_allclose(got, params["tokens"][[0, 2, 4, 0, 0, 1]], rtol=1e-6)


def test_cluster_form_is_a_softmax_mixture_of_prototypes():
    params, got = _apply("cluster")
    logits = params["mix_logits"][[0, 2, 4, 0, 0, 1]]
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    want = np.einsum("bk,ktd->btd", weights, params["prototypes"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "form,table", [("individual", "generic"), ("direct", "tokens"), ("cluster", "prototypes")]
)
def test_tokens_start_as_vocabulary_rows(form, table):
    vocab = _vocab()
    model = UserModel(
        num_users=U,
        width=D,
        num_tokens=T,
        form=form,
        num_clusters=K,
        token_init=vocab_rows_init(jnp.asarray(vocab)),
    )
    params = model.init(jax.random.key(7), jnp.asarray(IDS))["params"]
    rows = np.asarray(params[table]).reshape(-1, D)
    for row in rows:
        assert np.any(np.all(vocab == row, axis=1)), "initial token is not a vocabulary row"
    assert len({r.tobytes() for r in rows}) == len(rows)  # drawn without replacement
    if form == "individual":  # every user starts as the generic user
        out = model.apply({"params": params}, jnp.asarray(IDS))
        np.testing.assert_allclose(out, np.broadcast_to(params["generic"], out.shape))


def test_generic_user_gets_no_offset_gradient():
    model = UserModel(num_users=U, width=D, num_tokens=T)
    params = model.init(jax.random.key(0), jnp.asarray(IDS))["params"]
    grads = jax.grad(lambda p: model.apply({"params": p}, jnp.asarray(IDS)).sum())(params)
    np.testing.assert_array_equal(grads["offsets"][0], 0.0)
    np.testing.assert_array_equal(grads["offsets"][3], 0.0)  # user 3 not in the batch
    np.testing.assert_allclose(grads["offsets"][2], 1.0)
    np.testing.assert_allclose(grads["generic"], float(len(IDS)))


def test_width_mismatch_with_vocabulary_is_reported():
    model = UserModel(num_users=U, width=D + 1, token_init=vocab_rows_init(jnp.asarray(_vocab())))
    with pytest.raises(ValueError, match="width"):
        model.init(jax.random.key(0), jnp.asarray(IDS))
