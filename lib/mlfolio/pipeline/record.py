"""Keeping a run's record true when recording itself fails (issue 21).

The record (``manifest.json``, ``index.html``, the MLflow runs) is never more optimistic
than what happened: the local files are written first, with the cause; MLflow is told
after; a failure while recording a failure is caught and named in one line, never a
traceback. Used by the runner (and by other engines that end a run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlfolio.errors import MlfolioError, RecordError, TrackingError
from mlfolio.pipeline.manifest import Manifest

log = logging.getLogger(__name__)
T = TypeVar("T")


def os_cause(exc: OSError) -> str:
    """``No space left on device`` (the OS's words, without the path)."""
    return exc.strerror or str(exc)


class Recorder:
    """One run's record keeping: :meth:`store` runs a tracking call (the first failure is
    kept and later calls are skipped: each would wait out its retries again);
    :meth:`write` writes the manifest and the index (a failure is kept, as RecordError).
    ``failure`` is the first failure while recording."""

    def __init__(self, manifest: Manifest, folder: Path, tracking_uri: str):
        self.manifest = manifest
        self.folder = folder
        self.uri = tracking_uri
        self.failure: MlfolioError | None = None
        self.store_failed = False
        self.manifest_saved = True  # the file on disk says what manifest.data says

    def store(self, what: str, call: Callable[..., T], *args: Any) -> T | None:
        if self.store_failed:
            return None
        from mlfolio import tracking

        try:
            with tracking.guard(self.uri, what):
                return call(*args)
        except TrackingError as exc:
            log.info("%s", exc)  # the error line names it: once on the terminal
            self.store_failed = True
            self.failure = self.failure or exc
            return None

    def write(self) -> bool:
        """Render the index, then save the manifest (what gate-status reads, so it commits
        the status last); False (failure kept) when a file cannot be written. A run whose
        index cannot be written is not ``succeeded``; an index the manifest could not
        follow is removed (it would say more than the record)."""
        from mlfolio.pipeline import report

        index = self.folder / "index.html"
        indexed = True
        try:
            report.write_index(self.folder, self.manifest.data)
        except OSError as exc:
            indexed = False
            self._keep(RecordError(f"cannot write {index}: {os_cause(exc)}"))
            if self.manifest.status == "succeeded":
                self.mark_failed(self.failure)
        try:
            self.manifest.save()
        except RecordError as exc:
            self.manifest_saved = False
            self._keep(exc)
            if indexed and self.manifest.status == "succeeded":
                index.unlink(missing_ok=True)
            return False
        self.manifest_saved = True
        return indexed

    def _keep(self, exc: MlfolioError) -> None:
        log.info("%s", exc)  # the error line names it: once on the terminal
        self.failure = self.failure or exc

    def mark_failed(self, exc: BaseException) -> None:
        """The run failed while recording (or outside any stage): ``failed`` with the
        cause, never left ``running`` or ``succeeded``; a stage still running failed."""
        self.manifest.fail(exc, one_line(exc))

    def suffix(self) -> str:
        """What the error line adds about the record: where it is, or what it still says."""
        if not self.manifest_saved:
            on_disk = _status_on_disk(self.manifest.path)
            return (
                f"; the run's record could not be updated: {self.manifest.path} "
                f"{'is missing' if on_disk is None else f'still says {on_disk!r}'}"
            )
        parent = self.manifest.mlflow.get("parent_run_id")
        if self.store_failed and parent:
            return (
                f"; recorded in {self.folder} (its MLflow runs may still read RUNNING: "
                f"resume with --run-dir {self.folder} once the store answers)"
            )
        return f"; recorded in {self.folder}"


def one_line(exc: BaseException) -> str:
    """An error's message as one line (a SQLAlchemy or notebook error has more)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _status_on_disk(path: Path) -> str | None:
    import json

    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None


def end_failed(recorder: Recorder, exc: BaseException) -> MlfolioError:
    """A run ended by ``exc`` outside a stage's cells (the store, the disk, a bug): record
    it failed (locally first), end its MLflow runs FAILED, and return the one-line error
    to raise (``exc`` itself when it is not an mlfolio error: a bug keeps its traceback)."""
    if isinstance(exc, TrackingError):
        recorder.store_failed = True  # asking it again would wait out the retries again
    recorder.mark_failed(exc)
    recorder.write()
    parent = recorder.manifest.mlflow.get("parent_run_id")
    if parent:
        from mlflow.tracking import MlflowClient

        from mlfolio.pipeline.runlock import end_open_runs

        recorder.store(
            "ending the run's MLflow runs FAILED",
            lambda: end_open_runs(MlflowClient(tracking_uri=recorder.uri), parent, "FAILED"),
        )
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        exc = RecordError(f"cannot write{where}: {os_cause(exc)}")
    if not isinstance(exc, MlfolioError):
        return exc  # type: ignore[return-value]
    if isinstance(exc, TrackingError | RecordError):
        return type(exc)(one_line(exc) + recorder.suffix())
    return exc
