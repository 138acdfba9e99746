"""DPO with each row's tokens split over `mesh.sequence` trains step for step like one
device: 10 steps of the trainer's own step functions (loss, gradients, Adam) on 8 simulated
devices, every family (Gemma 2/3's sliding windows, attention and final soft-capping and a
scanned, rematerialised mix of layer types; Mistral's window on every layer; Qwen's biases
and q/k norms), right- and left-padded and packed rows, both attention strategies, with and
without fsdp beside the sequence axis, and splash inside each shard; and the objectives that
read more than pair sums (SparsePO's token KL and activation weights, P-DPO's soft user
tokens, CUT's two views) under `mesh.sequence=4`; and precompute-ref's table."""

import json
import os

import pytest
from simulated_devices import run_on_8_devices

HERE = os.path.dirname(__file__)

ALONE = {"mesh": {"fsdp": 1, "sequence": 4}, "devices": 4}
WITH_FSDP = {"mesh": {"fsdp": 2, "sequence": 4}, "devices": 8}
VARIANTS = [
    dict(family="llama3", layout="right", strategy="all_gather", grads=True, **ALONE),
    dict(family="llama3", layout="packed", strategy="ring", grads=True, **WITH_FSDP),
    dict(family="llama3", layout="packed", strategy="all_gather", balance=False, **WITH_FSDP),
    dict(family="gemma2", layout="right", strategy="ring", grads=True, **ALONE),
    dict(family="gemma3", scan=True, layout="packed", strategy="ring", grads=True, **ALONE),
    # The other families: Mistral's sliding window on every layer, Qwen2's q/k/v biases,
    # Qwen3's q/k norms and wider heads, Gemma's scaled embeddings, Llama 2.
    dict(family="mistral", layout="left", strategy="ring", **WITH_FSDP),
    dict(family="qwen2", layout="packed", strategy="all_gather", **ALONE),
    dict(family="qwen3", layout="right", strategy="ring", grads=True, **WITH_FSDP),
    dict(family="gemma", layout="packed", strategy="ring", **ALONE),
    dict(family="llama2", layout="right", strategy="all_gather", **WITH_FSDP),
    # Splash inside each shard (the TPU kernel, through the Pallas interpreter): its
    # backward's query tiles are 128 tokens at least, so rows of 512 at sequence=4.
    dict(
        family="gemma2",
        layout="packed",
        strategy="all_gather",
        backend="splash_interpret",
        length=512,
        grads=True,
        **WITH_FSDP,
    ),
    dict(
        family="llama3", layout="left", strategy="all_gather", backend="splash_interpret", length=512, **ALONE
    ),
]


# Every objective on Llama, 10 steps like the DPO variants.
METHOD_VARIANTS = [
    dict(family="llama3", layout="right", strategy="ring", method="sparsepo", **WITH_FSDP),
    dict(family="llama3", layout="left", strategy="all_gather", method="pdpo", **ALONE),
    dict(family="llama3", layout="right", strategy="ring", method="cut", **ALONE),
]

# precompute-ref's table of reference pair sums, rows split over sequence=4 and fsdp=2.
PRECOMPUTE = dict(family="llama3", layout="right", strategy="all_gather", precompute=True, **WITH_FSDP)


def _run_variants(variants, tmp_path_factory):
    """Each variant's losses (and gradients' differences) beside the unsharded run's, from
    `sequence_parallel_run.py` in a process with 8 simulated devices."""
    out = str(tmp_path_factory.mktemp("sequence_parallel") / "runs.json")
    script = os.path.join(HERE, "sequence_parallel_run.py")
    paths = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]
    proc = run_on_8_devices([script, json.dumps(variants), out], paths, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


def _assert_losses_match(run):
    assert len(run["losses"]) == 10
    for step, (got, want) in enumerate(zip(run["losses"], run["unsharded_losses"]), 1):
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (step, got, want)
    # The run learned something, so equal losses are not equal constants.
    assert run["unsharded_losses"][-1] < run["unsharded_losses"][0] - 0.01


def _variant_id(variants, keys):
    return lambda i: "-".join(str(variants[i][k]) for k in keys)


# The DPO variants in two halves, each one class: a class is one unit of work for parallel
# test runs (pytest-xdist's loadscope), so the halves' processes run side by side.
HALVES = (VARIANTS[0::2], VARIANTS[1::2])  # one splash variant (the slowest) in each
DPO_ID_KEYS = ("family", "layout", "strategy", "devices")


class DPOVariants:
    variants: list

    @pytest.fixture(scope="class")
    def runs(self, tmp_path_factory):
        return _run_variants(self.variants, tmp_path_factory)

    @pytest.mark.slow
    def test_per_step_losses_match_unsharded(self, runs, index):
        _assert_losses_match(runs[index])
        # Splash ran where asked (every layer, every step), and only there.
        assert (runs[index]["splash_calls"] > 0) == ("backend" in self.variants[index])

    @pytest.mark.slow
    def test_first_step_gradients_match_unsharded(self, runs):
        checked = [r for r in runs if "grad_max_abs_diff" in r]
        assert len(checked) == sum(1 for v in self.variants if v.get("grads")) > 0
        for r in checked:
            assert r["grad_max_abs_diff"] <= 1e-5 * r["grad_max_abs"], r


class TestFirstHalf(DPOVariants):
    variants = HALVES[0]


class TestSecondHalf(DPOVariants):
    variants = HALVES[1]


def pytest_generate_tests(metafunc):
    """A DPO half's per-variant test runs once per variant of that half."""
    if "index" in metafunc.fixturenames and metafunc.cls is not None and hasattr(metafunc.cls, "variants"):
        variants = metafunc.cls.variants
        metafunc.parametrize("index", range(len(variants)), ids=_variant_id(variants, DPO_ID_KEYS))


class TestObjectives:
    @pytest.fixture(scope="class")
    def method_runs(self, tmp_path_factory):
        return _run_variants(METHOD_VARIANTS, tmp_path_factory)

    @pytest.mark.slow
    @pytest.mark.parametrize(
        "index",
        range(len(METHOD_VARIANTS)),
        ids=_variant_id(METHOD_VARIANTS, ("method", "layout", "strategy", "devices")),
    )
    def test_objectives_per_step_losses_match_unsharded(self, method_runs, index):
        _assert_losses_match(method_runs[index])


@pytest.mark.slow
def test_precompute_ref_attends_across_sequence_shards_and_matches_one_device(tmp_path_factory):
    (run,) = _run_variants([PRECOMPUTE], tmp_path_factory)
    assert run["sequence_parallel_calls"] > 0  # the table's forward ran with rows split over `sequence`
    keys, chosen, rejected = run["table"]
    want_keys, want_chosen, want_rejected = run["unsharded_table"]
    assert keys == want_keys and len(keys) == 8
    for got, want in ((chosen, want_chosen), (rejected, want_rejected)):
        for g, w in zip(got, want):
            assert abs(g - w) <= 1e-5 * max(1.0, abs(w)), (g, w)
