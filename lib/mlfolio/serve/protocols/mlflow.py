"""The MLflow scoring protocol: ``POST /invocations`` JSON in its four formats, and the
predictions document (``mlflow models serve``'s, plus labels, threshold and request id)."""

from __future__ import annotations

from typing import Any

from mlfolio.errors import RequestError
from mlfolio.serve.columns import (
    Batch,
    Column,
    describe,
    expected_columns,
    validate_columns,
)
from mlfolio.serve.protocols import parse_json

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _records_to_columns(
    records: list[Any], columns: list[Column], where: str
) -> dict[str, list[Any]]:
    names = [c.name for c in columns if not c.optional]
    optional = [c.name for c in columns if c.optional]
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RequestError(
                f"{where}[{i}]: expected an object of column: value, got {describe(rec)}"
            )
    try:
        data = {name: [rec[name] for rec in records] for name in names}
    except KeyError as exc:
        name = exc.args[0]
        row = next(i for i, rec in enumerate(records) if name not in rec)
        raise RequestError(f"missing column {name!r} in {where}[{row}]") from None
    extra = 0
    for name in optional:  # an entity id may be given for some records only
        values = [rec.get(name) for rec in records]
        if any(name in rec for rec in records):
            data[name] = values
            extra += 1
    for i, rec in enumerate(records):
        if len(rec) != len(names) and (not extra or any(k not in data for k in rec)):
            unknown = [k for k in rec if k not in data]
            raise RequestError(
                f"unknown column(s) {unknown} in {where}[{i}]; the model "
                f"expects {expected_columns(columns)}"
            )
    return data


def predictions_doc(
    proba: Any, labels: Any, threshold: float, request_id: str, variants: list[str] | None = None
) -> dict[str, Any]:
    """The /invocations answer: ``mlflow models serve``'s ``predictions`` (``[[p_negative,
    p_positive], ...]``) plus labels, threshold, request id and, A/B, each row's variant."""
    doc: dict[str, Any] = {
        "predictions": proba.tolist(),
        "labels": labels.tolist(),
        "threshold": threshold,
        "request_id": request_id,
    }
    if variants is not None:
        doc["variants"] = variants
    return doc


def parse_mlflow_json(body: bytes, columns: list[Column]) -> Batch:
    """An MLflow scoring-protocol JSON body (any of the four formats) → checked rows."""
    doc, unicode_ok = parse_json(body, "JSON body")
    text = not unicode_ok  # lone surrogates may be in it: check the text
    if not isinstance(doc, dict):
        raise RequestError(
            f"the body must be a JSON object with one of the keys "
            f"{list(MLFLOW_FORMATS)}, got {describe(doc)}"
        )
    keys = [k for k in MLFLOW_FORMATS if k in doc]
    if len(keys) != 1:
        raise RequestError(
            f"the body must have exactly one of the keys {list(MLFLOW_FORMATS)}"
            f", got keys {sorted(doc)}"
        )
    key = keys[0]
    payload = doc[key]
    if key == "dataframe_split":
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("columns"), list)
            or not isinstance(payload.get("data"), list)
        ):
            raise RequestError(
                "dataframe_split: expected an object with 'columns' (a list of "
                "column names) and 'data' (a list of rows)"
            )
        names = payload["columns"]
        if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise RequestError(
                f"dataframe_split.columns: expected distinct column names, got {names}"
            )
        rows = payload["data"]
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(names):
                got = f"{len(row)} values" if isinstance(row, list) else describe(row)
                raise RequestError(
                    f"dataframe_split.data[{i}]: expected a list of "
                    f"{len(names)} values (one per column), got {got}"
                )
        if rows:  # zip(*rows) transposes in C: a column's values in one tuple, kept
            data = dict(zip(names, zip(*rows, strict=True), strict=True))
        else:
            data = {name: () for name in names}
        return validate_columns(data, columns, key, check_text=text)
    if isinstance(payload, list):
        return validate_columns(
            _records_to_columns(payload, columns, key), columns, key, check_text=text
        )
    if isinstance(payload, dict):
        if all(isinstance(v, list) for v in payload.values()):
            return validate_columns(dict(payload), columns, key, check_text=text)
        if not any(isinstance(v, list | dict) for v in payload.values()):
            return validate_columns(
                {k: [v] for k, v in payload.items()}, columns, key, check_text=text
            )
        raise RequestError(f"{key}: expected lists of values per column, or one value per column")
    raise RequestError(
        f"{key}: expected a list of records or an object of columns, got {describe(payload)}"
    )
