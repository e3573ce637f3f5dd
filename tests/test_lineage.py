"""Row keys and the record of the rows a model saw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlfolio import lineage, rowkeys
from mlfolio.errors import DataValidationError


def test_row_keys_follow_the_id_whatever_its_type_or_the_other_values(cfg, parts):
    test = parts["test"]
    keys = rowkeys.row_keys(test, cfg.schema)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == len(test)
    changed = test.assign(monthlycharges=test["monthlycharges"] + 5, churn="No")
    assert np.array_equal(rowkeys.row_keys(changed, cfg.schema), keys)
    as_category = test.assign(customerid=test["customerid"].astype("category"))
    assert np.array_equal(rowkeys.row_keys(as_category, cfg.schema), keys)
    numeric = pd.DataFrame({"customerid": [7, 8], **{c: test[c].head(2) for c in test}})
    numeric["customerid"] = [7, 8]
    as_text = numeric.assign(customerid=["7", "8"])
    assert np.array_equal(
        rowkeys.row_keys(numeric, cfg.schema), rowkeys.row_keys(as_text, cfg.schema)
    )
    # a blank id: the row is known by its values, not lumped with every other blank one
    blank = test.head(3).assign(customerid=["", None, " "])
    blank_keys = rowkeys.row_keys(blank, cfg.schema)
    assert len(set(blank_keys.tolist())) == 3
    no_id = cfg.schema.model_copy(update={"id_column": None})
    assert np.array_equal(blank_keys, rowkeys.row_keys(test.head(3), no_id))


def test_row_keys_are_pandas_default_hashes_of_the_id_text(cfg, parts):
    """Keys recorded before ids were hashed without factorizing them first: unchanged."""
    test = parts["test"]
    text = pd.Series(test["customerid"].astype(str).to_numpy(dtype=object))
    want = pd.util.hash_pandas_object(text, index=False).to_numpy(dtype=np.uint64)
    assert np.array_equal(rowkeys.row_keys(test, cfg.schema), want)
    no_id = cfg.schema.model_copy(update={"id_column": None})
    values = pd.DataFrame(
        {
            col: test[col].to_numpy(dtype="float64")
            if pd.api.types.is_numeric_dtype(test[col])
            else test[col].astype("string").to_numpy(dtype=object, na_value="")
            for col in [*cfg.schema.features, cfg.schema.target]
        }
    )
    want = pd.util.hash_pandas_object(values, index=False).to_numpy(dtype=np.uint64)
    assert np.array_equal(rowkeys.row_keys(test, no_id), want)


def test_seen_keys_are_train_and_valid_and_round_trip_through_parquet(cfg, parts, tmp_path):
    seen = lineage.seen_keys(parts, cfg.schema)
    assert len(seen) == len(parts["train"]) + len(parts["valid"])
    assert np.all(np.diff(seen.astype(np.float64)) >= 0)  # sorted
    assert not np.isin(rowkeys.row_keys(parts["test"], cfg.schema), seen).any()
    path = lineage.write_keys(tmp_path / "seen.parquet", seen)
    assert np.array_equal(lineage.read_keys(path), seen)
    assert path.stat().st_size < 10 * len(seen)  # about 8 bytes a row
    pd.DataFrame({"id": [1]}).to_parquet(tmp_path / "wrong.parquet")
    with pytest.raises(DataValidationError, match="wrong.parquet: no 'row_key' column"):
        lineage.read_keys(tmp_path / "wrong.parquet")


def test_row_hashes_are_pandas_row_hashes():
    rng = np.random.default_rng(0)
    n = 5000
    frame = pd.DataFrame(
        {
            "id": [f"row-{i}" for i in range(n)],
            "few": rng.choice(np.array(["a", "b", "c"], dtype=object), n),
            "few with missing": rng.choice(np.array(["a", None, np.nan], dtype=object), n),
            "unique with missing": [None if i % 7 == 0 else f"x{i}" for i in range(n)],
            "number": rng.normal(size=n),
            "count": rng.integers(0, 5, n),
            "category": pd.Categorical(rng.choice(["p", "q"], n)),
            "pandas text": pd.array(rng.choice(["u", "v"], n), dtype="string"),
        }
    )
    want = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    assert np.array_equal(rowkeys.row_hashes(frame), want)
    for column in frame:
        want = pd.util.hash_pandas_object(frame[column], index=False).to_numpy(dtype=np.uint64)
        assert np.array_equal(rowkeys.row_hashes(frame[column]), want), column
    assert len(rowkeys.row_hashes(frame.head(0))) == 0
