"""Ground truth that arrives after the predictions, joined to them by id."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfolio.errors import DataValidationError

log = logging.getLogger("mlfolio.predlog")  # one logger for the package, as before the split


# -- ground truth -------------------------------------------------------------------------
_ID_COLUMNS = ("request_id", "entity_id")
_TIME_COLUMNS = ("ts", "timestamp", "labelled_at", "observed_at")


def read_labels(
    path: str | Path,
    target: str,
    positive_label: Any,
    negative_label: Any,
    id_column: str | None = None,
) -> pd.DataFrame:
    """Ground-truth outcomes from a CSV or Parquet file.

    The file holds ``target`` (values ``positive_label``/``negative_label``, or 1/0) and at
    least one id column: ``request_id`` (with ``row`` for multi-row requests), ``entity_id``
    or ``id_column`` (the schema's id column, e.g. ``customerid``; renamed ``entity_id``).
    Returns the id columns, an optional time column (``ts``, ``timestamp``, ...) and
    ``actual`` (1.0 / 0.0). Ids labelled twice with different outcomes are logged as a
    warning with their count.
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"labels file {path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".txt"):
            df = pd.read_csv(
                path,
                dtype={
                    "request_id": str,
                    "entity_id": str,
                    **({id_column: str} if id_column else {}),
                },
            )
        else:
            raise DataValidationError(f"labels file {path}: expected a .csv or .parquet file")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataValidationError(f"labels file {path}: cannot read it: {exc}") from exc
    if df.empty:
        raise DataValidationError(f"labels file {path}: no rows")
    entity_name = id_column if id_column and id_column in df.columns else "entity_id"
    if id_column and id_column in df.columns and id_column not in _ID_COLUMNS:
        if "entity_id" in df.columns:
            raise DataValidationError(
                f"labels file {path}: both 'entity_id' and {id_column!r}; keep one"
            )
        df = df.rename(columns={id_column: "entity_id"})
    ids = [c for c in _ID_COLUMNS if c in df.columns]
    if not ids:
        expected = ["request_id", "entity_id", *([id_column] if id_column else [])]
        raise DataValidationError(
            f"labels file {path}: no id column; expected one of "
            f"{expected}, got columns {list(df.columns)}"
        )
    if target not in df.columns:
        raise DataValidationError(
            f"labels file {path}: no column {target!r} (the target); got columns {list(df.columns)}"
        )
    actual = _to_binary(df[target], positive_label, negative_label, f"labels file {path}", target)
    out = df[ids].copy()
    for c in ids:
        missing = out[c].isna()
        if missing.all():
            raise DataValidationError(f"labels file {path}: column {c!r} is empty")
        out[c] = out[c].astype(object).where(missing, out[c].astype(str))
    if "request_id" in ids and "row" in df.columns:
        out["row"] = pd.to_numeric(df["row"], errors="raise").astype("int64")
    when = next((c for c in _TIME_COLUMNS if c in df.columns), None)
    if when is not None:
        out["labelled_at"] = pd.to_datetime(df[when], utc=True)
    out["actual"] = actual
    _warn_conflicting_labels(out, f"labels file {path}", entity_name, when)
    return out.reset_index(drop=True)


def _warn_conflicting_labels(
    labels: pd.DataFrame, where: str, entity_name: str, time_column: str | None
) -> None:
    """Warn, with the count, about ids labelled more than once with different outcomes
    (keyed as :func:`join_labels` keys them by default)."""
    if "request_id" in labels.columns:
        keys = ["request_id", *(["row"] if "row" in labels.columns else [])]
        name, used = "request_id", "the last in the file is used"
    else:
        keys, name = ["entity_id"], entity_name
        used = (
            f"the latest by {time_column!r} is used"
            if time_column
            else "the last in the file is used"
        )
    outcomes = labels.dropna(subset=[keys[0]]).groupby(keys, dropna=False)["actual"].nunique()
    conflicting = outcomes[outcomes > 1]
    if conflicting.empty:
        return
    ids = list(conflicting.index.get_level_values(0).unique()[:3])
    log.warning(
        "%s: %d id(s) listed more than once with different outcomes, e.g. %s %s; %s",
        where,
        len(conflicting),
        name,
        ids,
        used,
    )


def _to_binary(
    values: pd.Series, positive: Any, negative: Any, where: str, column: str
) -> np.ndarray:
    text = values.astype(str).str.strip()
    pos = text.isin({str(positive), "1", "1.0", "True", "true"})
    neg = text.isin({str(negative), "0", "0.0", "False", "false"})
    bad = ~(pos | neg)
    if bad.any():
        unknown = sorted(set(values[bad].astype(str)))[:5]
        raise DataValidationError(
            f"{where}: column {column!r} has value(s) {unknown}; "
            f"expected {positive!r}/{negative!r} or 1/0"
        )
    return np.where(pos.to_numpy(), 1.0, 0.0)


def join_labels(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    on: str | None = None,
    target: str = "actual",
    id_column: str | None = None,
) -> pd.DataFrame:
    """``predictions`` with a float column ``actual`` (1.0 / 0.0, NaN without a label).

    ``on="request_id"`` matches labels to the logged request (and ``row`` when the labels
    have it; otherwise one label covers every row of the request). ``on="entity_id"``
    matches by entity, using each entity's most recent label (by its time column, else the
    last in the file) for every prediction of that entity. ``on=None`` takes
    ``request_id`` when the labels have it, else the entity id (``entity_id`` or
    ``id_column``); a frame without request ids (a ``--current`` file) joins by entity.
    ``target`` is the labels' 0/1 column (``actual`` from
    :func:`read_labels`).
    """
    labels = labels.copy()
    if id_column and id_column in labels.columns and "entity_id" not in labels.columns:
        labels = labels.rename(columns={id_column: "entity_id"})
    if on is None:
        both = "request_id" in labels.columns and "request_id" in predictions.columns
        on = "request_id" if both else "entity_id"
    if on not in ("request_id", "entity_id"):
        raise DataValidationError(f"join_labels: on={on!r}; expected 'request_id' or 'entity_id'")
    for frame, what in ((labels, "labels"), (predictions, "predictions")):
        if on not in frame.columns:
            raise DataValidationError(f"join_labels: the {what} have no {on!r} column")
    if target not in labels.columns:
        raise DataValidationError(f"join_labels: the labels have no {target!r} column")
    keys = [on, "row"] if on == "request_id" and "row" in labels.columns else [on]
    if on == "entity_id":
        if "labelled_at" in labels.columns:
            labels = labels.sort_values("labelled_at", kind="stable")
    labels = labels.dropna(subset=[on]).drop_duplicates(subset=keys, keep="last")
    right = labels[keys + [target]].rename(columns={target: "_actual"})
    right[on] = right[on].astype(str)
    left = predictions.drop(columns=["actual"], errors="ignore")
    key = left[on].astype(object).where(left[on].isna(), left[on].astype(str))
    merged = left.assign(_key=key).merge(
        right.rename(columns={on: "_key"}),
        how="left",
        on=["_key", *keys[1:]],
        validate="many_to_one",
    )
    out = merged.drop(columns=["_key"]).rename(columns={"_actual": "actual"})
    out["actual"] = pd.to_numeric(out["actual"], errors="coerce").astype("float64")
    out.index = predictions.index
    return out
