"""The methods that sample from the policy while training: MO-ODPO and online CUT.

Each declares its batch source (a sampler over the stage's prompts, in `alignjax.online`)
and reuses an offline method's loss.
"""

from __future__ import annotations

import dataclasses

import jax

from alignjax.data.pipeline import make_pipeline
from alignjax.online import mo_odpo, online_cut
from alignjax.online.mo_odpo import MOODPOSection, OnlinePairSource
from alignjax.online.online_cut import OnlineCutSource
from alignjax.train.methods import cut, dpo
from alignjax.train.methods.registry import Method


def _prompts(run, dcfg):
    return make_pipeline(dataclasses.replace(dcfg, record_type="prompt"), run.tokenizer)


def _mo_odpo_source(run, stage, stage_index, dcfg):
    scfg = stage.config
    return OnlinePairSource(
        _prompts(run, dcfg),
        dataclasses.replace(dcfg, record_type="preference"),
        run.tokenizer,
        run.model_cfg,
        scfg.loss.section("mo_odpo"),
        seed=scfg.seed + stage_index,
        per_host_batch=dcfg.batch_size // jax.process_count(),
        pad_id=run.pad_id,
        generation_config=run.model_meta["generation_config"],
        mesh=run.mesh,
    )


def _build_mo_odpo(cfg, loss, sizes):
    # The pairs are sampled online; the loss is sigmoid DPO, and the reference sees the same
    # weight-conditioned prompt as the policy.
    return dpo.build(cfg, dataclasses.replace(loss, type="sigmoid"), sizes)


def _online_cut_source(run, stage, stage_index, dcfg):
    scfg = stage.config
    section = scfg.loss.section("cut")
    return OnlineCutSource(
        _prompts(run, dcfg),
        dcfg,
        run.tokenizer,
        run.model_cfg,
        section.judge,
        section.sampling,
        seed=scfg.seed + stage_index,
        per_host_batch=dcfg.batch_size // jax.process_count(),
        pad_id=run.pad_id,
        generation_config=run.model_meta["generation_config"],
        mesh=run.mesh,
    )


MO_ODPO = Method(
    name="mo_odpo",
    accepts=lambda loss: loss.names == ("mo_odpo",),
    build=_build_mo_odpo,
    section=MOODPOSection,
    batch_source=_mo_odpo_source,
    rollout=lambda loss: mo_odpo.rollout_plan(loss.section("mo_odpo")),
    batch_record_type="preference",
    no_precomputed_reference="its pairs are sampled online, so there is nothing to precompute",
)
ONLINE_CUT = Method(
    name="online_cut",
    accepts=lambda loss: loss.names == ("cut",) and loss.section("cut").judge is not None,
    build=cut.build,
    data_options=cut.data_options,
    batch_source=_online_cut_source,
    rollout=lambda loss: online_cut.rollout_plan(loss.section("cut").sampling),
    batch_record_type="cut",
)
