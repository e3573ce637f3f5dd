"""Writing the prediction log: the table, and the writer thread that commits batches."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlfolio.errors import DataValidationError

log = logging.getLogger("mlfolio.predlog")  # one logger for the package, as before the split


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
# What one row's values can raise when bound or stored; anything else is the store's.
_ROW_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.IntegrityError,
)
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
        except _ROW_ERRORS:
            # A value SQLite cannot bind or store (text that is not valid Unicode, an
            # integer past 64 bits) fails the whole statement: find its rows and write
            # the others, instead of dropping every request written with it.
            self._write_isolating(records)
        except sqlite3.Error as exc:  # the store itself (locked, full, read-only): all fail
            self._failed(good, exc)
        finally:
            with self._lock:
                self._queued_rows -= n_rows

    def _write_isolating(self, records: list[tuple[Any, ...]]) -> None:
        """One transaction again, chunk by chunk; a failing chunk row by row (a failed
        statement changes nothing), dropping only the rows that fail."""
        assert self._con is not None
        bad, cause = 0, None
        try:
            with self._con:
                for start in range(0, len(records), self._chunk_rows):
                    chunk = records[start : start + self._chunk_rows]
                    try:
                        self._insert_many(chunk)
                        continue
                    except _ROW_ERRORS:
                        pass
                    for record in chunk:
                        try:
                            self._con.execute(self._insert, record)
                        except _ROW_ERRORS as exc:
                            bad += 1
                            cause = cause or exc
        except sqlite3.Error as exc:
            self._failed(len(records), exc)
            return
        self.rows_written += len(records) - bad
        self.transactions += 1
        if bad:
            self._failed(bad, cause, f" (the other {len(records) - bad} rows are written)")

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

    def _failed(self, n_rows: int, exc: Exception | None, note: str = "") -> None:
        # The server keeps serving; the rows are counted as dropped, and said so.
        self.write_errors += 1
        self.rows_dropped += n_rows
        log.error("prediction log %s: could not write %d rows: %s%s", self.path, n_rows, exc, note)

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
