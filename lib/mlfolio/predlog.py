"""The prediction log: every row the model server scores, durably, in one SQLite file.

``mlfolio serve --prediction-log DIR`` hands each scored batch to :class:`PredictionLog`
from the scoring thread; a writer thread commits what has queued up every ``flush_seconds``
(or every ``flush_rows`` rows) as one transaction into ``DIR/predictions.sqlite``. SQLite in
WAL mode makes a commit atomic and durable against a killed process: ``kill -9`` loses at
most the batch not yet committed, never rows committed before it, and readers (the monitor)
read while the server writes.

Table ``predictions``: ``request_id, row, entity_id, ts, model_name, model_version,
variant, shadow, score, label, threshold`` and one column per model input, under its own
name. :func:`read` returns a window of it as a DataFrame; :func:`read_labels` and
:func:`join_labels` attach ground truth that arrives later, by request id or entity id.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlfolio.errors import DataValidationError

log = logging.getLogger(__name__)

DB_NAME = "predictions.sqlite"
MAX_QUEUED_ROWS = 1_000_000
BASE_COLUMNS = (
    "request_id",
    "row",
    "entity_id",
    "ts",
    "model_name",
    "model_version",
    "variant",
    "shadow",
    "score",
    "label",
    "threshold",
)
_BASE_DDL = (
    "request_id TEXT NOT NULL, row INTEGER NOT NULL, entity_id TEXT, ts REAL NOT NULL, "
    "model_name TEXT NOT NULL, model_version TEXT NOT NULL, variant TEXT NOT NULL, "
    "shadow INTEGER NOT NULL, score REAL NOT NULL, label INTEGER NOT NULL, "
    "threshold REAL NOT NULL"
)
_SQL_TYPES = {"string": "TEXT", "double": "REAL", "long": "INTEGER", "boolean": "INTEGER"}
_BUSY_MS = 30_000


class ColumnLike(Protocol):
    """What the log needs of a model input column (:class:`mlfolio.serve.Column`)."""

    name: str
    kind: str  # string, double, long or boolean


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def db_path(folder: str | Path) -> Path:
    return Path(folder) / DB_NAME


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=_BUSY_MS / 1000, check_same_thread=False)
    con.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
    return con


@dataclass(frozen=True)
class _Batch:
    """One scored block, as the server had it: no per-row work until the writer thread."""

    columns: Mapping[str, Sequence[Any]]
    scores: np.ndarray
    n: int
    request_id: str | Sequence[str]
    rows: Sequence[int] | None
    entity_id: Any  # one id for all rows (any scalar), or a list/array of one per row
    model_name: str
    model_version: str
    variant: str
    shadow: bool
    threshold: float
    ts: float


@dataclass(frozen=True)
class _Rows:
    """A small scored block already turned into insert tuples."""

    records: list[tuple[Any, ...]]
    n: int


_EAGER_ROWS = 8
_MAX_CHUNK_ROWS = 500  # rows per INSERT statement (bounded by SQLite's variable limit)


class PredictionLog:
    """Append-only prediction log with a background writer (see the module docstring).

    ``append`` only enqueues; ``flush`` blocks until everything appended before it is
    committed; ``close`` flushes and stops the writer. Beyond ``max_queued_rows`` rows
    waiting, new rows are dropped and counted instead of growing memory without bound.
    """

    def __init__(
        self,
        folder: str | Path,
        columns: Sequence[ColumnLike],
        *,
        flush_rows: int = 1000,
        flush_seconds: float = 0.5,
        max_queued_rows: int = MAX_QUEUED_ROWS,
    ):
        self.folder = Path(folder)
        self.path = db_path(folder)
        kinds: dict[str, str] = {}
        for col in columns:  # the union of the served models' inputs, first kind wins
            kinds.setdefault(col.name, col.kind)
        clash = sorted(set(kinds) & set(BASE_COLUMNS))
        if clash:
            raise DataValidationError(
                f"prediction log {self.path}: input column(s) {clash} "
                "clash with the log's own columns"
            )
        self.kinds = kinds
        self.flush_rows = max(1, flush_rows)
        self.flush_seconds = flush_seconds
        self.max_queued_rows = max_queued_rows
        self.rows_written = 0
        self.rows_dropped = 0
        self.transactions = 0
        self.write_errors = 0
        self._queued_rows = 0  # appended, not yet committed
        self._unclaimed_rows = 0  # appended, not yet taken by the writer
        self._lock = threading.Lock()
        # A deque and a timer, not a blocking queue: waking the writer on every append would
        # make it fight the event loop for the GIL thousands of times a second.
        self._items: deque[_Batch | threading.Event] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._con: sqlite3.Connection | None = None
        self._insert = ""
        self._warned_at = 0.0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> PredictionLog:
        """Create or open the database (adding new input columns), start the writer."""
        if self._thread is not None:
            return self
        self._closing = False
        self.folder.mkdir(parents=True, exist_ok=True)
        con = _connect(self.path)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        features = ", ".join(f"{_quote(n)} {_SQL_TYPES[k]}" for n, k in self.kinds.items())
        with con:
            con.execute(
                f"CREATE TABLE IF NOT EXISTS predictions ({_BASE_DDL}"
                f"{', ' + features if features else ''})"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS predlog_columns "
                "(name TEXT PRIMARY KEY, kind TEXT NOT NULL)"
            )
            have = {r[1] for r in con.execute("PRAGMA table_info(predictions)")}
            for name, kind in self.kinds.items():
                if name not in have:  # a newer model version with a new input
                    con.execute(
                        f"ALTER TABLE predictions ADD COLUMN {_quote(name)} {_SQL_TYPES[kind]}"
                    )
            con.executemany(
                "INSERT OR IGNORE INTO predlog_columns VALUES (?, ?)", list(self.kinds.items())
            )
            # Only ts: windows are read by time. Labels are joined in pandas after the read,
            # so indexes on request_id/entity_id would only slow every insert (~45 %).
            con.execute("CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts)")
        names = [*BASE_COLUMNS, *self.kinds]
        self._insert = (
            f"INSERT INTO predictions ({', '.join(map(_quote, names))}) "
            f"VALUES ({', '.join('?' * len(names))})"
        )
        limit = con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunk_rows = max(1, min(_MAX_CHUNK_ROWS, limit // len(names)))
        self._width = len(names)
        self._con = con
        self._thread = threading.Thread(target=self._writer, name="mlfolio-predlog", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Commit everything appended so far and stop the writer (idempotent)."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._closing = True
        self._wake.set()
        thread.join()
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> PredictionLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------
    def append(
        self,
        columns: Mapping[str, Sequence[Any]],
        scores: np.ndarray,
        *,
        request_id: str | Sequence[str],
        model_name: str,
        model_version: str,
        variant: str,
        threshold: float,
        shadow: bool = False,
        rows: Sequence[int] | None = None,
        entity_id: Any = None,
        ts: float | None = None,
    ) -> bool:
        """Queue ``len(scores)`` scored rows; O(1), safe from any thread.

        ``columns`` maps input names to per-row values (extra names are ignored, missing
        ones logged as NULL); ``scores`` is the positive-class probability per row.
        ``request_id`` and ``entity_id`` are one value for all rows or one per row; ``rows``
        the rows' positions in their request (default 0..n-1). Returns False when the
        rows were dropped because the queue is full.
        """
        n = len(scores)
        with self._lock:
            if self._queued_rows + n > self.max_queued_rows:
                self.rows_dropped += n
                now = time.monotonic()
                warn = now - self._warned_at > 60
                if warn:
                    self._warned_at = now
            else:
                self._queued_rows += n
                # Wake the writer once, when the rows it has not taken yet cross flush_rows;
                # not on every append after that (tiny transactions, GIL ping-pong).
                full = self._unclaimed_rows < self.flush_rows <= self._unclaimed_rows + n
                self._unclaimed_rows += n
                warn = None
        if warn is not None:
            if warn:
                log.warning(
                    "prediction log %s: %d rows waiting, dropping new rows (%d dropped so far)",
                    self.path,
                    self._queued_rows,
                    self.rows_dropped,
                )
            return False
        batch = _Batch(
            columns,
            scores,
            n,
            request_id,
            rows,
            entity_id,
            model_name,
            model_version,
            variant,
            bool(shadow),
            float(threshold),
            time.time() if ts is None else ts,
        )
        if n <= _EAGER_ROWS:
            # Small requests become their rows' tuples now (~2 us): a queued request's
            # parsed columns would be ~40 live objects until the writer runs, and that
            # many young survivors make the garbage collector dearer for every request.
            try:
                item: _Batch | _Rows = _Rows(self._records(batch), n)
            except (ValueError, TypeError) as exc:
                with self._lock:
                    self._queued_rows -= n
                self._failed(n, exc)
                return False
        else:
            item = batch
        self._items.append(item)
        if full:
            self._wake.set()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every row appended before this call is committed."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._items.append(done)
        self._wake.set()
        return done.wait(timeout)

    def stats(self) -> dict[str, int]:
        return {
            "rows_written": self.rows_written,
            "rows_dropped": self.rows_dropped,
            "transactions": self.transactions,
            "write_errors": self.write_errors,
            "rows_queued": self._queued_rows,
        }

    def _writer(self) -> None:
        """Every ``flush_seconds`` (sooner past ``flush_rows`` rows, on flush or close):
        take everything queued and commit it as one transaction."""
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            closing = self._closing
            with self._lock:
                self._unclaimed_rows = 0
            items = []
            while self._items:
                items.append(self._items.popleft())
            batches = [b for b in items if isinstance(b, _Batch | _Rows)]
            if batches:
                self._write(batches, sum(b.n for b in batches))
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if closing and not self._items:
                return

    def _write(self, batches: list[_Batch | _Rows], n_rows: int) -> None:
        """One transaction for everything pending: a crash keeps all of it or none."""
        assert self._con is not None
        records: list[tuple[Any, ...]] = []
        good = 0
        for batch in batches:
            try:
                records += batch.records if isinstance(batch, _Rows) else self._records(batch)
                good += batch.n
            except (ValueError, TypeError) as exc:  # one malformed append, not the others
                self._failed(batch.n, exc)
        try:
            with self._con:
                self._insert_many(records)
            self.rows_written += good
            self.transactions += 1
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            self._failed(good, exc)
        finally:
            with self._lock:
                self._queued_rows -= n_rows

    def _insert_many(self, records: list[tuple[Any, ...]]) -> None:
        """Multi-row INSERTs of up to ``_chunk_rows`` rows each. executemany would step
        SQLite once per row, releasing and re-taking the GIL every time: each re-take
        interrupts the event loop (a forced switch), which cost the server ~20 % of its
        single-row throughput. One statement per chunk takes the GIL back a few times."""
        assert self._con is not None
        size = self._chunk_rows
        statements: dict[int, str] = {}
        for start in range(0, len(records), size):
            chunk = records[start : start + size]
            sql = statements.get(len(chunk))
            if sql is None:
                row = "(" + ",".join("?" * self._width) + ")"
                head = self._insert.partition(" VALUES ")[0]
                sql = statements[len(chunk)] = f"{head} VALUES {','.join([row] * len(chunk))}"
            self._con.execute(sql, list(itertools.chain.from_iterable(chunk)))

    def _failed(self, n_rows: int, exc: Exception) -> None:
        # The server keeps serving; the rows are counted as dropped, and said so.
        self.write_errors += 1
        self.rows_dropped += n_rows
        log.error("prediction log %s: could not write %d rows: %s", self.path, n_rows, exc)

    def _records(self, b: _Batch) -> list[tuple[Any, ...]]:
        n = b.n
        if n == 1:  # the common single-row request: one tuple, no per-column lists
            return [self._record(b)]
        scores = np.asarray(b.scores, dtype=np.float64).reshape(-1)
        per_row: list[Sequence[Any]] = [
            [b.request_id] * n if isinstance(b.request_id, str) else b.request_id,
            range(n) if b.rows is None else [int(r) for r in b.rows],
            _entities(b.entity_id, n),
            [b.ts] * n,
            [b.model_name] * n,
            [b.model_version] * n,
            [b.variant] * n,
            [int(b.shadow)] * n,
            scores.tolist(),
            (scores >= b.threshold).astype(np.int64).tolist(),
            [b.threshold] * n,
        ]
        for name, kind in self.kinds.items():
            values = b.columns.get(name)
            if values is None:
                per_row.append([None] * n)
            elif kind == "boolean":
                per_row.append([None if v is None else int(v) for v in values])
            else:
                per_row.append(values)
        return list(zip(*per_row, strict=True))

    def _record(self, b: _Batch) -> tuple[Any, ...]:
        score = float(np.asarray(b.scores, dtype=np.float64).reshape(-1)[0])
        request_id = b.request_id if isinstance(b.request_id, str) else b.request_id[0]
        row = 0 if b.rows is None else int(b.rows[0])
        entity = _entities(b.entity_id, 1)[0]
        values = []
        for name, kind in self.kinds.items():
            column = b.columns.get(name)
            value = None if column is None else column[0]
            values.append(int(value) if kind == "boolean" and value is not None else value)
        return (
            request_id,
            row,
            entity,
            b.ts,
            b.model_name,
            b.model_version,
            b.variant,
            int(b.shadow),
            score,
            int(score >= b.threshold),
            b.threshold,
            *values,
        )


def _entities(entity: Any, n: int) -> Sequence[str | None]:
    if isinstance(entity, list | tuple | np.ndarray):
        return [None if v is None else str(v) for v in entity]
    return [None if entity is None else str(entity)] * n


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
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=_BUSY_MS / 1000)
    try:
        con.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        return int(con.execute(f"SELECT COUNT(*) FROM predictions{where}", params).fetchone()[0])
    except sqlite3.Error as exc:
        raise DataValidationError(f"prediction log {path}: cannot read it: {exc}") from exc
    finally:
        con.close()


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
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=_BUSY_MS / 1000)
    try:
        con.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        try:
            kinds = dict(con.execute("SELECT name, kind FROM predlog_columns").fetchall())
            df = pd.read_sql_query(sql, con, params=params)
        except (sqlite3.Error, pd.errors.DatabaseError) as exc:
            raise DataValidationError(f"prediction log {path}: cannot read it: {exc}") from exc
    finally:
        con.close()
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
