"""`loss.type: kto` keys as a user writes them: TRL's KTOConfig names under `loss.kto`."""

import pytest

from alignjax.core import configlib
from alignjax.train.config import LossSection


def _loss(tree):
    return configlib.from_dict(LossSection, tree, "loss")


def test_kto_section_reads_trl_names():
    loss = _loss(
        {
            "type": "kto",
            "beta": 0.3,
            "kto": {"loss_type": "apo_zero_unpaired", "desirable_weight": 1.5, "undesirable_weight": 0.5},
        }
    )
    section = loss.section("kto")
    assert (section.loss_type, section.desirable_weight, section.undesirable_weight) == (
        "apo_zero_unpaired",
        1.5,
        0.5,
    )
    assert loss.beta == 0.3
    assert _loss({"type": "kto"}).section("kto").loss_type == "kto"  # TRL's default


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"type": "kto", "kto": {"loss_type": "sigmoid"}}, r"loss.kto.loss_type='sigmoid': choose one of"),
        (
            {"type": "kto", "kto": {"undesirable_weight": -1.0}},
            r"loss.kto.desirable_weight=1.0 and undesirable",
        ),
        ({"type": "kto", "beta": 0.0}, r"loss.beta=0.0 must be > 0"),
        (
            {"type": "kto", "reference": "precomputed"},
            r"loss.reference=precomputed is not supported .*mismatched",
        ),
    ],
)
def test_bad_kto_keys_are_named(tree, message):
    with pytest.raises(ValueError, match=message):
        _loss(tree)
