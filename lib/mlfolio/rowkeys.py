"""Stable 64-bit keys of rows: what a split and a model's lineage identify a row by.

A row's key is a hash of its id (``schema.id_column``) as text or, without an id (or for a
row whose id is blank), of its feature and target values. pandas' SipHash with its fixed
key gives the same key in every run, process and machine, so a row keeps its split for
life (``split.method: hash``) and a later run can tell which rows a model has seen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlfolio.config import SchemaConfig, SplitConfig

SPLIT_NAMES = ("train", "valid", "test")


def _text(values: pd.Series) -> pd.Series:
    """``values`` as Python strings ('' for missing), however the source typed them."""
    return pd.Series(values.astype("string").to_numpy(dtype=object, na_value=""))


def _factorized_first(values: pd.Series) -> bool:
    """Whether pandas should factorize ``values`` before hashing them (its default):
    needed for a text column with missing values (they hash apart only so), cheaper for
    one of few distinct values (only those are hashed, each text encoded once); a column
    of mostly distinct texts (ids) is hashed value by value, without a hash table of
    them (6 s of 7 for 4M ids on this machine). Either way the numbers are the same."""
    if values.dtype != object or bool(values.isna().any()):
        return True
    head = values.iloc[:1000]
    return bool(head.nunique() < len(head) // 2)


def row_hashes(values: pd.Series | pd.DataFrame) -> np.ndarray:
    """``pd.util.hash_pandas_object(values, index=False)``'s numbers (uint64 per row),
    each column hashed the cheaper of pandas' two equivalent ways
    (:func:`_factorized_first`)."""
    from pandas.core.util.hashing import combine_hash_arrays

    def hashed(column: pd.Series) -> np.ndarray:
        return pd.util.hash_array(column._values, categorize=_factorized_first(column))

    if isinstance(values, pd.Series):
        return hashed(values).astype(np.uint64, copy=False)
    columns = (hashed(column) for _, column in values.items())
    return combine_hash_arrays(columns, len(values.columns)).astype(np.uint64, copy=False)


def _content_keys(df: pd.DataFrame, schema: SchemaConfig) -> np.ndarray:
    """Keys from the row's feature and target values. Numbers (and flags) hash as
    float64 and everything else as text, so a 0/1 column read as int, float or bool, or a
    number read as int or float, gives the same key."""
    columns = [c for c in (*schema.features, schema.target) if c in df.columns]
    normal = {}
    for col in columns:
        values = df[col]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            normal[col] = pd.Series(values.to_numpy(dtype="float64", na_value=np.nan))
        else:
            normal[col] = _text(values)
    frame = pd.DataFrame(normal)
    return row_hashes(frame)


def row_keys(df: pd.DataFrame, schema: SchemaConfig) -> np.ndarray:
    """One uint64 key per row of ``df``: its id's text hashed, else its values hashed."""
    id_col = schema.id_column
    if not id_col or id_col not in df.columns:
        return _content_keys(df, schema)
    text = _text(df[id_col])
    keys = row_hashes(text)
    blank = (text.str.strip() == "").to_numpy()
    if blank.any():  # no id to follow: the row is known by its values
        keys[blank] = _content_keys(df.loc[blank], schema)
    return keys


def unit_interval(keys: np.ndarray) -> np.ndarray:
    """Keys mapped evenly onto [0, 1) (their top 53 bits: exact in a float64)."""
    return (np.asarray(keys, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) / 2.0**53


def hash_assignment(keys: np.ndarray, cfg: SplitConfig) -> np.ndarray:
    """'test' / 'valid' / 'train' per key: test below ``test_size`` on the unit interval,
    valid up to ``test_size + valid_size``, train above. The cut does not depend on the
    class, nor on any other row, so each class gets the configured shares up to sampling
    noise, and a row's split never changes when rows are added or removed."""
    u = unit_interval(keys)
    return np.where(
        u < cfg.test_size, "test", np.where(u < cfg.test_size + cfg.valid_size, "valid", "train")
    )
