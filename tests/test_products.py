"""Stage products declared once: paths, models, manifest summaries."""

from __future__ import annotations

import json

import pytest

from mlfolio import pipeline, products
from mlfolio.config import load
from mlfolio.context import StageContext
from mlfolio.errors import StageError

from .conftest import CHURN_PARAMS


def test_a_missing_product_names_the_stage_and_notebook_that_write_it(tmp_path):
    """For every declared product, read by a later stage from an empty run folder."""
    notebooks = {s.name: s.notebook for s in (*pipeline.STAGES, *pipeline.MONITOR_STAGES)}
    for product in products.ALL:
        with pytest.raises(StageError) as caught:
            _ctx(tmp_path, "ab_report").read(product)
        writer = f"run the {product.stage} stage ({notebooks[product.stage]}) first"
        assert f"{tmp_path / product.path} is missing: {writer}" in str(caught.value)
    with pytest.raises(StageError, match=r"not_a_product.json is missing: run the upstream"):
        _ctx(tmp_path, "ab_report").read_json("not_a_product.json")


def _ctx(tmp_path, stage: str) -> StageContext:
    return StageContext(stage=stage, cfg=load(CHURN_PARAMS), run_dir=tmp_path)


def test_a_product_that_breaks_its_model_is_not_written(tmp_path):
    ctx = _ctx(tmp_path, "evaluate")
    with pytest.raises(StageError, match=r"evaluate.json field candidate.name: Field required"):
        ctx.write(products.EVALUATE, {"candidate": {}, "threshold": 0.5})
    assert not (tmp_path / "evaluate.json").exists()


def test_a_corrupt_upstream_product_names_file_and_field(tmp_path):
    (tmp_path / "ab.json").write_text(
        json.dumps({"design": "ab", "recommendation": {"action": "ship it"}})
    )
    with pytest.raises(StageError, match=r"ab.json field recommendation.action"):
        _ctx(tmp_path, "ab_report").read(products.AB)


def test_missing_upstream_product_names_its_stage(tmp_path):
    with pytest.raises(StageError, match=r"run the tune stage \(04_tune.ipynb\) first"):
        _ctx(tmp_path, "evaluate").read(products.TUNE)


def test_collect_summarises_each_product_for_the_manifest(tmp_path):
    ctx = _ctx(tmp_path, "ingest")
    ctx.write(
        products.INGEST,
        {
            "source": "data/telco_churn.csv",
            "data_hash": "ab" * 32,
            "rows": 4000,
            "positive_rate": 0.26,
            "columns": 21,
        },
    )
    ctx = _ctx(tmp_path, "ab_report")
    ctx.write(
        products.AB,
        {
            "design": "shadow",
            "recommendation": {"action": "keep", "summary": "no difference", "reasons": ["p=0.4"]},
            "variants": [],
        },
    )
    summary = products.collect(tmp_path)
    assert summary["data_hash"] == "ab" * 32
    assert summary["data"] == {
        "source": "data/telco_churn.csv",
        "rows": 4000,
        "positive_rate": 0.26,
        "dropped_missing_target": 0,
        "quality": None,  # an ingest from before data-quality counts
    }
    assert summary["ab"]["recommendation"]["action"] == "keep"
    assert "gate" not in summary and "model" not in summary
    doc = products.AB.load(tmp_path)
    assert doc.recommendation.action == "keep" and doc.variants == []  # extra fields kept


def test_a_serverless_sagemaker_endpoint_says_so_in_its_outcome():
    variant = {"kind": "serverless", "memory_mb": 1024, "max_concurrency": 5}
    doc = {"status": "deployed", "variant": variant}
    assert products.deploy_outcome("sagemaker", doc) == (
        "deployed (Serverless Inference, 1024 MB, up to 5 at once)"
    )
    doc["serverless_sizing"] = {"measured_peak_rss_mb": 301.6, "memory_mb": 1024}
    assert products.deploy_outcome("sagemaker", doc) == (
        "deployed (Serverless Inference, 1024 MB, sized from a 302 MB peak, up to 5 at once)"
    )
    instances = {"kind": "instances", "instance_type": "ml.m5.large", "instance_count": 1}
    assert products.deploy_outcome("sagemaker", {"status": "deployed", "variant": instances}) == (
        "deployed"
    )
    assert products.deploy_outcome("sagemaker", {"status": "failed", "variant": variant}) == (
        "failed"
    )
