"""The stage declarations (mlfolio/graph.py) agree with the product catalog and with
each other: what a stage reads was written before it, every product has one writer."""

from __future__ import annotations

import inspect

import pytest

from mlfolio import config, products
from mlfolio.graph import MONITOR_STAGES, PIPELINES, STAGES, Stage


@pytest.mark.parametrize("kind", list(PIPELINES))
def test_every_read_is_written_by_an_earlier_stage_of_the_same_pipeline(kind):
    written: set[str] = set()
    for stage in PIPELINES[kind]:
        unknown = [p for p in stage.reads if p not in products.BY_PATH]
        assert not unknown, f"{stage.name} reads undeclared products {unknown}"
        unwritten = [p for p in stage.reads if p not in written]
        assert not unwritten, f"{stage.name} reads {unwritten} before any stage writes it"
        assert not set(stage.reads) & set(stage.writes), f"{stage.name} reads its own products"
        assert set(stage.upstream) <= {s.name for s in PIPELINES[kind]}
        written.update(stage.writes)


def test_every_product_has_one_producer_among_the_declared_stages():
    paths = [p.path for p in products.ALL]
    assert len(paths) == len(set(paths)), "a path declared twice"
    stages = {s.name for s in (*STAGES, *MONITOR_STAGES)}
    orphans = {p.path: p.stage for p in products.ALL if p.stage not in stages}
    assert not orphans, f"products of no declared stage: {orphans}"
    # each stage's writes are the catalog's products of that stage, no more, no less
    by_stage = {s.name: set(s.writes) for s in (*STAGES, *MONITOR_STAGES)}
    assert set().union(*by_stage.values()) == set(paths)


def test_ordering_traits_point_at_earlier_stages_and_the_gate_comes_first():
    names = [s.name for s in STAGES]
    for i, stage in enumerate(STAGES):
        assert set(stage.after) <= set(names[:i]), stage.name
    gates = [i for i, s in enumerate(STAGES) if s.decides_gate]
    assert len(gates) == 1
    gated = [i for i, s in enumerate(STAGES) if s.gated]
    assert gated and min(gated) > gates[0]
    # a stage that acts outside the run folder is never reused; one reading the source is
    assert all(not s.reusable for s in STAGES if s.gated)
    assert [s.name for s in STAGES if s.reads_source] == [STAGES[0].name]


def test_the_kfp_components_take_exactly_the_folders_of_the_stages_they_read():
    from kfp.dsl import Artifact, Input

    from mlfolio.pipeline.kfp import components

    assert set(components.STAGE_COMPONENTS) == {s.name for s in STAGES}
    for stage in STAGES:
        signature = inspect.signature(components.STAGE_COMPONENTS[stage.name])
        inputs = [n for n, p in signature.parameters.items() if p.annotation == Input[Artifact]]
        assert inputs == list(stage.upstream), stage.name


def test_upstream_names_the_producers_of_the_reads_in_order():
    stage = Stage(
        "x",
        "x.ipynb",
        (),
        reads=(products.EVALUATE.path, products.SNAPSHOT.path, products.INGEST.path),
    )
    assert stage.upstream == ("evaluate", "ingest")
    assert Stage("y", "y.ipynb", (), reads=("nowhere.json",)).upstream == ("?",)


def test_a_reproduction_stops_before_the_first_stage_acting_outside_the_run_folder():
    from mlfolio.pipeline import reproduce

    assert [s.name for s in reproduce._stages()] == [
        "ingest",
        "preprocess",
        "train",
        "tune",
        "evaluate",
    ]


def test_stages_section_has_one_field_per_declared_stage():
    # config cannot import the graph (a lower floor); the stages: section names each stage
    fields = config.StagesConfig.model_fields
    assert [f.alias or name for name, f in fields.items()] == [s.name for s in STAGES]
    stages = config.StagesConfig()
    assert [stages.of(s.name).retries for s in STAGES] == [0, 0, 0, 0, 0, 0, 2]


def test_stages_section_defaults_and_partial_overrides():
    stages = config.StagesConfig.model_validate({"deploy": {"timeout_s": 60}})
    assert stages.deploy.retries == 2 and stages.deploy.timeout_s == 60
    assert stages.tune.timeout_s == 6 * 3600 and stages.train.retries == 0
    assert (
        config.StagesConfig.model_validate({"register": {"retries": 1}}).of("register").retries == 1
    )
    with pytest.raises(ValueError, match="retries"):  # noqa: PT011 (pydantic's error)
        config.StagesConfig.model_validate({"train": {"retries": -1}})
    with pytest.raises(ValueError, match="trian"):  # noqa: PT011
        config.StagesConfig.model_validate({"trian": {"retries": 1}})
