"""StageContext: reading upstream products, whole or as a sample of their rows."""

from __future__ import annotations

import pandas as pd
import pytest

from mlfolio import data, explain, products
from mlfolio.config import load
from mlfolio.context import StageContext
from mlfolio.errors import StageError

from .conftest import CHURN_PARAMS

TRAIN = products.SPLITS["train"].path


def _ctx(tmp_path, stage: str = "evaluate") -> StageContext:
    return StageContext(stage=stage, cfg=load(CHURN_PARAMS), run_dir=tmp_path)


@pytest.mark.parametrize("seed", [0, 42])
def test_a_sample_read_alone_is_the_sample_of_the_whole_read(tmp_path, seed):
    """read_parquet_sample picks the rows explain.sample_rows picks of the whole product
    (same rows, values, dtypes and index labels), and all of them when it has too few."""
    ctx = _ctx(tmp_path)
    cfg = ctx.cfg
    rows = data.load_source(cfg.data, columns=data.schema_columns(cfg.schema))
    ctx.write_parquet(TRAIN, rows)
    whole = ctx.read_parquet(TRAIN)
    for n in (1, 2000, len(rows) - 1):
        got = ctx.read_parquet_sample(TRAIN, n, seed)
        pd.testing.assert_frame_equal(got, explain.sample_rows(whole, n, seed))
    pd.testing.assert_frame_equal(ctx.read_parquet_sample(TRAIN, len(rows), seed), whole)


def test_a_missing_product_sample_names_the_stage_that_writes_it(tmp_path):
    with pytest.raises(StageError, match=r"train.parquet is missing: run the preprocess"):
        _ctx(tmp_path).read_parquet_sample(TRAIN, 10, 0)
