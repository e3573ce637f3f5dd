"""Reading a window of the prediction log back as a DataFrame."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mlfolio.errors import DataValidationError
from mlfolio.predlog.writer import _BUSY_MS, BASE_COLUMNS, db_path

log = logging.getLogger("mlfolio.predlog")  # one logger for the package, as before the split


# -- reading ----------------------------------------------------------------------------
def _utc_seconds(when: datetime | None, name: str) -> float | None:
    if when is None:
        return None
    if not isinstance(when, datetime):
        raise DataValidationError(f"{name}: expected a datetime, got {when!r}")
    if when.tzinfo is None:  # naive means UTC, as everywhere in mlfolio
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _existing(folder: str | Path) -> Path:
    path = db_path(folder)
    if not path.is_file():
        raise DataValidationError(
            f"prediction log {path}: no such file (start the server "
            "with --prediction-log pointing at this folder)"
        )
    return path


def _window(
    since: datetime | None, until: datetime | None, include_shadow: bool, variant: str | None
) -> tuple[str, list[Any]]:
    where, params = [], []
    for op, value in ((">=", _utc_seconds(since, "since")), ("<", _utc_seconds(until, "until"))):
        if value is not None:
            where.append(f"ts {op} ?")
            params.append(value)
    if not include_shadow:
        where.append("shadow = 0")
    if variant is not None:
        where.append("variant = ?")
        params.append(variant)
    return (" WHERE " + " AND ".join(where) if where else ""), params


@contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the log that waits out a writer; a SQLite error while it
    is open is a DataValidationError naming the file."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=_BUSY_MS / 1000)
    try:
        con.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        yield con
    except (sqlite3.Error, pd.errors.DatabaseError) as exc:
        raise DataValidationError(f"prediction log {path}: cannot read it: {exc}") from exc
    finally:
        con.close()


def count(
    folder: str | Path,
    since: datetime | None = None,
    until: datetime | None = None,
    include_shadow: bool = False,
    variant: str | None = None,
) -> int:
    """How many rows :func:`read` would return, without reading them (0 without a log)."""
    path = db_path(folder)
    if not path.is_file():
        return 0
    where, params = _window(since, until, include_shadow, variant)
    with _reading(path) as con:
        return int(con.execute(f"SELECT COUNT(*) FROM predictions{where}", params).fetchone()[0])


def request_times(
    folder: str | Path, since: datetime | None = None, until: datetime | None = None
) -> list[float]:
    """When each answered request arrived (UTC seconds, one per request id, oldest first;
    shadow rows left out): the traffic the server saw, for :mod:`mlfolio.cost`."""
    path = _existing(folder)
    where, params = _window(since, until, False, None)
    sql = f"SELECT MIN(ts) AS t FROM predictions{where} GROUP BY request_id ORDER BY t"
    with _reading(path) as con:
        return [float(row[0]) for row in con.execute(sql, params)]


def read(
    folder: str | Path,
    since: datetime | None = None,
    until: datetime | None = None,
    include_shadow: bool = False,
    variant: str | None = None,
) -> pd.DataFrame:
    """Logged rows with ``since <= ts < until`` (naive datetimes are UTC), oldest first.

    Shadow rows (a challenger scored alongside, not answered) only with
    ``include_shadow``. Columns: the log's own (``ts`` tz-aware UTC, ``shadow`` bool), then
    the model inputs under their names: integers as Int64 (nullable), other numbers as
    float, text as object — as the model's signature types them.
    """
    path = _existing(folder)
    where, params = _window(since, until, include_shadow, variant)
    sql = f"SELECT * FROM predictions{where} ORDER BY ts, request_id, row"
    with _reading(path) as con:
        kinds = dict(con.execute("SELECT name, kind FROM predlog_columns").fetchall())
        df = pd.read_sql_query(sql, con, params=params)
    df["ts"] = pd.to_datetime(df["ts"].astype("float64"), unit="s", utc=True)
    df["shadow"] = df["shadow"].astype(bool)
    df["row"] = df["row"].astype("int64")
    df["score"] = df["score"].astype("float64")
    df["label"] = df["label"].astype("int64")
    df["threshold"] = df["threshold"].astype("float64")
    df["entity_id"] = df["entity_id"].astype(object)
    for name in df.columns[len(BASE_COLUMNS) :]:
        if kinds.get(name) == "long":
            # Int64, not float: a 0/1 flag read back as 0.0 would be the text "0.0" to the
            # model's category coercion (an unseen category) and to the drift tests.
            df[name] = pd.to_numeric(df[name], errors="coerce").astype("Int64")
        elif kinds.get(name) in ("double", "boolean"):
            df[name] = pd.to_numeric(df[name], errors="coerce").astype("float64")
        else:
            df[name] = df[name].astype(object)
    return df
