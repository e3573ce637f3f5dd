"""Mutual exclusion for registry decisions that MLflow cannot make atomic.

MLflow aliases have no compare-and-set: "move ``champion`` only if it still points at v1"
is a read, then a write, and another process can move the alias in between. mlfolio holds
a lock from the re-read to the write. Which lock depends on where the registry lives:

- ``sqlite:///path/mlflow.db``: an exclusive ``flock`` on ``path/mlflow.db.<key>.lock``
  beside the store (every process sharing the file shares the folder).
- ``postgresql://...``: a session-level advisory lock (``pg_advisory_lock``) in the
  registry's own database, released when the session ends, so a killed holder frees it.
- ``http(s)://`` (a tracking server): a lease written as a tag of the registered model,
  then read back after a settle delay; the holder renews nothing, the lease expires after
  ``lease_s``; two first writes of the tag at once (the server's unique key refusing
  one) count as a lost race. Tag writes are last-writer-wins, so this is exclusive only
  while every writer's read-to-write gap stays below the settle delay. For a strict
  lock, point ``registry.lock_uri`` at the tracking server's PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from mlfolio.errors import LockTimeoutError, LockUnavailableError, masked

log = logging.getLogger(__name__)

POLL_S = 0.05
LEASE_TAG_PREFIX = "mlfolio.lock."


def owner() -> str:
    """Who holds a lock: host, process and a random suffix (two holders never match)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), waited for up to ``timeout_s``."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text(errors="replace").strip() or "unknown"
                    raise LockTimeoutError(
                        f"lock {path} still held by {holder} after {timeout_s:g} s"
                    ) from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner()} since {datetime.now(UTC).isoformat()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _advisory_key(key: str) -> int:
    """A signed 64-bit number for ``pg_advisory_lock`` (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


@contextlib.contextmanager
def postgres_lock(url: str, key: str, timeout_s: float) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock on ``key`` in the database at ``url``."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    number = _advisory_key(key)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + timeout_s
            while not conn.execute(
                sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": number}
            ).scalar():
                conn.rollback()
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"PostgreSQL advisory lock {key!r} ({number}) still "
                        f"held after {timeout_s:g} s"
                    )
                time.sleep(POLL_S)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": number})
                conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def lease_lock(
    model_name: str, key: str, timeout_s: float, lease_s: float = 120.0, settle_s: float = 0.5
) -> Iterator[None]:
    """A lease tag on the registered model ``model_name`` (HTTP tracking servers)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    tag = LEASE_TAG_PREFIX + _slug(key)
    me = owner()
    deadline = time.monotonic() + timeout_s
    while True:
        tags = client.get_registered_model(model_name).tags or {}
        held = json.loads(tags[tag]) if tag in tags else None
        if held is None or held.get("expires", 0) < time.time():
            lease = json.dumps({"owner": me, "expires": time.time() + lease_s})
            try:
                client.set_registered_model_tag(model_name, tag, lease)
                wrote = True
            except MlflowException as exc:
                if not _write_conflict(exc):
                    raise
                # Another holder's INSERT of the same tag won the race: it holds the
                # lease (or the settle delay decides), so read again like any loser.
                log.debug("lease %s: write conflict, reading again: %s", tag, exc)
                wrote = False
            if wrote:
                time.sleep(settle_s)  # a writer that read before ours wrote after it: it wins
                now = (client.get_registered_model(model_name).tags or {}).get(tag)
                if now and json.loads(now).get("owner") == me:
                    break
        if time.monotonic() >= deadline:
            raise LockTimeoutError(
                f"lease {tag} on {model_name} still held by "
                f"{(held or {}).get('owner', 'another writer')} after "
                f"{timeout_s:g} s"
            )
        time.sleep(POLL_S * 4)
    try:
        yield
    finally:
        try:
            now = (client.get_registered_model(model_name).tags or {}).get(tag)
            if now and json.loads(now).get("owner") == me:
                client.delete_registered_model_tag(model_name, tag)
        except MlflowException as exc:  # never hide the block's own error; the lease expires
            log.warning(
                "lease %s on %s not released (expires in %g s): %s", tag, model_name, lease_s, exc
            )


# What a tracking server answers when two clients INSERT the same tag at once (its
# store's primary key on (name, key)): PostgreSQL, MySQL, SQLite.
_CONFLICT_MARKERS = ("UniqueViolation", "duplicate key", "Duplicate entry", "UNIQUE constraint")


def _write_conflict(exc: Exception) -> bool:
    return any(marker in str(exc) for marker in _CONFLICT_MARKERS)


def lock_kind(uri: str) -> str:
    """``file``, ``postgres`` or ``lease``: the lock :func:`registry_lock` takes for ``uri``."""
    if uri.startswith("sqlite:///"):
        return "file"
    if uri.startswith(("postgresql:", "postgresql+", "postgres:")):
        return "postgres"
    return "lease"


def lock_file(store: Path, purpose: str, model_name: str) -> Path:
    """The lock file beside a SQLite store: ``mlflow.db.<purpose>-<model>.lock``
    (``.gitignore`` keeps these out of git)."""
    return store.with_name(f"{store.name}.{_slug(purpose)}-{_slug(model_name)}.lock")


@contextlib.contextmanager
def registry_lock(
    registry_uri: str,
    model_name: str,
    purpose: str,
    timeout_s: float = 60.0,
    source: str = "the registry",
) -> Iterator[str]:
    """Hold the lock for ``purpose`` (``promote``, ``retrain``) on ``model_name``.

    Yields the kind of lock taken. Raises :class:`LockTimeoutError` naming the holder
    when it cannot be had within ``timeout_s``, and :class:`LockUnavailableError` naming
    ``source`` (the parameter that chose the store) when its store cannot be reached.
    """
    key = f"mlfolio:{purpose}:{model_name}"
    kind = lock_kind(registry_uri)
    if kind == "file":
        store = Path(registry_uri.removeprefix("sqlite:///"))
        ctx = file_lock(lock_file(store, purpose, model_name), timeout_s)
    elif kind == "postgres":
        ctx = postgres_lock(registry_uri, key, timeout_s)
    else:
        ctx = lease_lock(model_name, key, timeout_s)
    with contextlib.ExitStack() as held:
        # Only taking the lock is translated: errors of the caller's block pass unchanged.
        try:
            held.enter_context(ctx)
        except LockTimeoutError:
            raise
        except Exception as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise LockUnavailableError(
                f"{source}: cannot take the {purpose} lock ({kind}) at "
                f"{masked(registry_uri)}: {reason[0] if reason else type(exc).__name__}"
            ) from exc
        log.debug("holding %s lock %s", kind, key)
        yield kind
