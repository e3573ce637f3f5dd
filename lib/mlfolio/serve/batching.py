"""Micro-batching: requests that arrive together, or while a batch is scored, become the next
batch, one ``predict_proba`` call: on the event loop for a few rows of the compiled scorer,
else in a worker thread."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from mlfolio.errors import RequestError
from mlfolio.predlog import PredictionLog
from mlfolio.serve.columns import Batch
from mlfolio.serve.contract import scoring_error
from mlfolio.serve.metrics import ServerMetrics
from mlfolio.serve.model import ServedModel
from mlfolio.serve.options import MAX_BATCH_ROWS

log = logging.getLogger(__name__)


@dataclass(eq=False)
class RowMeta:
    """Where a block's rows come from, for the prediction log: the request's id, the rows'
    positions in the request (None: 0..n-1) and the entity id (one for all rows, one per
    row, or None)."""

    request_id: str
    rows: np.ndarray | None = None
    entity: str | tuple[Any, ...] | None = None


class Scores(NamedTuple):
    """One caller's rows scored: class probabilities (n, 2) and the labels (1 where the
    positive probability reaches the model's threshold), computed once per batch."""

    proba: np.ndarray
    labels: np.ndarray


@dataclass(eq=False)
class _Job:
    block: Batch
    future: asyncio.Future
    meta: RowMeta | None = None


class MicroBatcher:
    """Scores the requests that arrive while a batch is being scored as one next batch.

    Requests wait in a deque; once per turn of the event loop everything waiting (up to
    ``max_batch_rows`` rows) becomes one batch: one ``predict_proba`` call, each caller's
    slice delivered back. A batch of at most ``inline_rows`` rows is scored right there on
    the event loop: for a few rows of the compiled scorer (~25 µs a row) the hand-off to a
    thread and back cost more than the scoring (a queue put, a thread wake-up and the
    GIL passed back and forth: ~20 % of a 1-row request's server time). A bigger batch goes
    to the scoring thread, so the loop keeps reading requests meanwhile; those that arrive
    until it is done become the next batch. Batches grow with the load and shrink to one
    request when the server is idle, so nothing waits for a timer. A batch that raises is
    re-scored request by request, so one bad request fails alone. With a prediction log,
    each scored batch is handed to it (an O(1) enqueue; the log's own thread writes).

    ``inline_rows`` defaults to the scorer's ``inline_rows`` attribute (0, always the
    thread, for a scorer without one: the sklearn pipeline takes ~9 ms a call).
    """

    def __init__(
        self,
        model: ServedModel,
        metrics: ServerMetrics | None,
        max_batch_rows: int = MAX_BATCH_ROWS,
        max_pending_rows: int | None = None,
        *,
        variant: str = "champion",
        shadow: bool = False,
        predlog: PredictionLog | None = None,
        inline_rows: int | None = None,
    ):
        self.model = model
        self.scorer = model.scorer
        self.metrics = metrics
        self.variant = variant
        self.shadow = shadow
        self.predlog = predlog
        self.primary = variant == "champion" and not shadow
        self._rows_counter = (
            None
            if metrics is None
            else metrics.variant_rows.labels(model.name, model.version, variant, str(int(shadow)))
        )
        self.max_batch_rows = max(1, max_batch_rows)
        self.max_pending_rows = max_pending_rows or 64 * self.max_batch_rows
        if inline_rows is None:
            inline_rows = getattr(self.scorer, "inline_rows", 0)
        self.inline_rows = max(0, inline_rows)
        self._queue: deque[_Job] = deque()
        self._pending_rows = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._scheduled = False  # a _dispatch is due on the loop
        self._busy = False  # a batch is on the scoring thread
        self._inbox: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._worker, name="mlfolio-score", daemon=True)
        self._thread.start()
        self._running = True

    async def stop(self) -> None:
        self._running = False
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(RequestError("the server is shutting down", 503))
        self._pending_rows = 0
        if self._thread is not None:
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    async def score(self, block: Batch, meta: RowMeta | None = None) -> Scores:
        """``block``'s rows scored: probabilities (n, 2) and labels."""
        return await self.submit(block, meta)

    def submit(self, block: Batch, meta: RowMeta | None = None) -> asyncio.Future:
        """Queue ``block``; the future gets its :class:`Scores`. Call on the event loop."""
        if not self._running or self._loop is None:
            raise RequestError("the server is not ready", 503)
        if self._pending_rows + block.n > self.max_pending_rows and self._pending_rows:
            raise RequestError(
                f"the server is overloaded ({self._pending_rows} rows waiting); retry later", 503
            )
        future = self._loop.create_future()
        self._queue.append(_Job(block, future, meta))
        self._pending_rows += block.n
        if not self._scheduled and not self._busy:
            # After the callbacks already due: requests read in the same turn of the loop
            # join this batch.
            self._scheduled = True
            self._loop.call_soon(self._dispatch)
        return future

    def _dispatch(self) -> None:
        """On the event loop: the waiting requests become one batch, scored here when small,
        else handed to the scoring thread."""
        self._scheduled = False
        while self._queue and not self._busy:
            jobs = [self._queue.popleft()]
            rows = jobs[0].block.n
            while self._queue and rows + self._queue[0].block.n <= self.max_batch_rows:
                job = self._queue.popleft()
                jobs.append(job)
                rows += job.block.n
            self._pending_rows -= rows
            jobs = [job for job in jobs if not job.future.done()]  # callers gone away
            if not jobs:
                continue
            if sum(job.block.n for job in jobs) <= self.inline_rows:
                try:
                    results = self._score_jobs(jobs)
                except Exception as exc:  # _score_jobs catches; this is a last resort
                    log.exception("batch scoring failed")
                    results = [exc] * len(jobs)
                _deliver(jobs, results)
                # Callers resume after what is already due on the loop: the requests that
                # arrive meanwhile wait for the next turn, as one batch.
                if self._queue:
                    self._scheduled = True
                    self._loop.call_soon(self._dispatch)
                return
            self._busy = True
            self._inbox.put(jobs)  # while the thread scores, new requests queue up

    def _thread_done(self, jobs: list[_Job], results: list[Scores | BaseException]) -> None:
        """On the event loop: a threaded batch is scored; the next one may go."""
        _deliver(jobs, results)
        self._busy = False
        if self._running and self._queue and not self._scheduled:
            self._dispatch()

    def _worker(self) -> None:
        """The scoring thread: batches in, results handed to the loop in one callback."""
        assert self._loop is not None
        while (jobs := self._inbox.get()) is not None:
            try:
                results = self._score_jobs(jobs)
            except Exception as exc:  # _score_jobs catches; this is a last resort
                log.exception("batch scoring failed")
                results = [exc] * len(jobs)
            try:
                self._loop.call_soon_threadsafe(self._thread_done, jobs, results)
            except RuntimeError:  # the loop closed while we scored
                return

    def _score_jobs(self, jobs: list[_Job]) -> list[Scores | BaseException]:
        """Runs on the worker thread: one predict_proba for all jobs, sliced back."""
        started = time.perf_counter()
        batch = Batch.concat([job.block for job in jobs], (c.name for c in self.model.columns))
        n = batch.n
        try:
            proba = self.scorer.predict_proba(batch)
        except Exception as exc:
            if len(jobs) > 1:
                return [self._score_jobs([job])[0] for job in jobs]
            return [scoring_error(exc)]
        labels = (proba[:, 1] >= self.model.threshold).astype(int)  # the only place
        if self.metrics is not None:
            if self.primary:
                self.metrics.batch(n, len(jobs), time.perf_counter() - started, proba[:, 1], labels)
            self._rows_counter.inc(n)
        out: list[Scores | BaseException] = []
        start = 0
        for job in jobs:
            stop = start + job.block.n
            out.append(Scores(proba[start:stop], labels[start:stop]))
            start = stop
        if self.predlog is not None:
            self._log_batch(jobs, batch.values, proba, out)
        return out

    def _log_batch(
        self,
        jobs: list[_Job],
        cols: Mapping[str, tuple[Any, ...]],
        proba: np.ndarray,
        out: list[Scores | BaseException],
    ) -> None:
        """Hand the whole scored batch to the prediction log as one append (the columns
        are already concatenated): per-request work stays off the log's path."""
        if len(jobs) == 1 or any(job.meta is None for job in jobs):
            self._log(jobs, out)
            return
        request_ids: list[str] = []
        rows: list[int] = []
        entities: list[Any] = []
        for job in jobs:
            meta, n = job.meta, job.block.n
            assert meta is not None
            request_ids += [meta.request_id] * n
            rows += range(n) if meta.rows is None else meta.rows.tolist()
            entities += list(meta.entity) if isinstance(meta.entity, tuple) else [meta.entity] * n
        model = self.model
        self.predlog.append(
            cols,
            proba[:, 1],
            request_id=request_ids,
            rows=rows,
            entity_id=entities,
            model_name=model.name,
            model_version=model.version,
            variant=self.variant,
            threshold=model.threshold,
            shadow=self.shadow,
            ts=time.time(),
        )

    def _log(self, jobs: list[_Job], results: list[Scores | BaseException]) -> None:
        """Hand each scored request to the prediction log: one enqueue per request."""
        model, log_ = self.model, self.predlog
        assert log_ is not None
        ts = time.time()
        for job, scores in zip(jobs, results, strict=True):
            meta = job.meta
            if meta is None or isinstance(scores, BaseException):
                continue
            log_.append(
                job.block.values,
                scores.proba[:, 1],
                request_id=meta.request_id,
                rows=meta.rows,
                entity_id=meta.entity,
                model_name=model.name,
                model_version=model.version,
                variant=self.variant,
                threshold=model.threshold,
                shadow=self.shadow,
                ts=ts,
            )


def _deliver(jobs: list[_Job], results: list[Scores | BaseException]) -> None:
    """On the event loop: each caller gets its slice (or its error)."""
    for job, result in zip(jobs, results, strict=True):
        if job.future.done():
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
