"""The SageMaker container contract's ``text/csv``: CSV bodies with or without a header row
(MLflow's /invocations takes them too), and the ``probability,label`` CSV answer."""

from __future__ import annotations

import csv
import io
from typing import Any

from mlfolio.errors import RequestError
from mlfolio.serve.columns import (
    Batch,
    Column,
    ColumnKind,
    check_values,
    describe,
    expected_columns,
    validate_columns,
)


def _from_text(col: Column, values: list[str], where: str) -> list[Any]:
    """CSV fields to typed values: an empty field is a missing value."""
    out: list[Any] = []
    for i, text in enumerate(values):
        if text == "":
            out.append(None)
            continue
        if col.kind in (
            ColumnKind.STRING,
            ColumnKind.ENTITY,
            ColumnKind.DOUBLE,
        ):  # double: check_values reads it
            out.append(text)
            continue
        stripped = text.strip()
        try:
            if col.kind is ColumnKind.LONG:
                try:
                    out.append(int(stripped))
                except ValueError:
                    number = float(stripped)
                    if not number.is_integer():
                        raise
                    out.append(int(number))
            else:
                flag = {"true": True, "1": True, "false": False, "0": False}[stripped.lower()]
                out.append(flag)
        except (ValueError, KeyError, OverflowError):
            expected = {ColumnKind.LONG: "an integer", ColumnKind.BOOLEAN: "true or false"}[
                col.kind
            ]
            raise RequestError(
                f"column {col.name!r}: expected {expected} (signature type "
                f"{col.kind}), got {describe(text)} in row {i} ({where})"
            ) from None
    return check_values(col, out, where)


def parse_csv(body: bytes, columns: list[Column]) -> Batch:
    """A CSV body → checked rows. With a header row naming columns in any order, or, as
    SageMaker's built-in containers send it, without one: values in signature order."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the CSV body is not UTF-8: {exc}") from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as exc:
        raise RequestError(f"malformed CSV body: {exc}") from None
    if not rows:
        raise RequestError("empty CSV body: expected a header row and data rows")
    names = [c.name for c in columns]
    required = [c.name for c in columns if not c.optional]
    first = [h.strip() for h in rows[0]]
    if any(h in names for h in first):
        header, data_rows = first, rows[1:]
        if len(set(header)) != len(header):
            raise RequestError(f"CSV header: duplicate column names in {header}")
    elif len(first) in (len(names), len(required)):  # the entity id, if any, comes last
        header, data_rows = (names if len(first) == len(names) else required), rows
    else:
        raise RequestError(
            f"CSV: the first row names none of the model's columns {names} and "
            f"is not a row of {len(names)} values either ({len(first)} values)"
        )
    for i, row in enumerate(data_rows):
        if len(row) != len(header):
            raise RequestError(
                f"CSV row {i}: expected {len(header)} values (one per column), got {len(row)}"
            )
    by_name = {c.name: c for c in columns}
    unknown = [h for h in header if h not in by_name]
    if unknown:
        raise RequestError(
            f"unknown column(s) {unknown} in the CSV header; the model expects "
            f"{expected_columns(columns)}"
        )
    data = {
        h: _from_text(by_name[h], [row[j] for row in data_rows], "CSV")
        for j, h in enumerate(header)
    }
    return validate_columns(data, columns, "CSV")


def csv_answer(proba: Any, labels: Any) -> str:
    """The ``Accept: text/csv`` answer: one ``probability,label`` line per row."""
    lines = [f"{p!r},{k}" for p, k in zip(proba[:, 1].tolist(), labels.tolist(), strict=True)]
    return "\n".join(lines) + "\n"
