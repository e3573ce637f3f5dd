"""A/B routing by entity hash and shadow scoring between a champion and a challenger."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlfolio.errors import RequestError, ServeError
from mlfolio.serve.batching import MicroBatcher, RowMeta, Scores
from mlfolio.serve.columns import Batch
from mlfolio.serve.metrics import ServerMetrics
from mlfolio.serve.model import ServedModel

log = logging.getLogger(__name__)


def route_share(salt: str, key: str) -> float:
    """A stable number in [0, 1) for ``key``: the first 8 bytes of BLAKE2b(salt:key).

    A row goes to the challenger when this is below the challenger's weight, so an entity
    keeps its variant across requests, batch sizes and server restarts (same salt)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Routing:
    """How a request's rows are routed (from :class:`~mlfolio.serve.options.ServeOptions`):
    ``mode`` ``"ab"``, ``"shadow"`` or None (one model); the challenger's ``weight`` and
    the ``salt`` of :func:`route_share` (A/B); the entity column; ``log_rows``: a
    prediction log records the rows, so each part carries its :class:`RowMeta`."""

    mode: str | None = None
    weight: float | None = None
    salt: str = ""
    entity_column: str | None = None
    log_rows: bool = False


@dataclass(eq=False)
class Part:
    batcher: MicroBatcher
    block: Batch
    meta: RowMeta | None
    index: np.ndarray | None = None  # the part's rows in the request; None: all of them


@dataclass(eq=False)
class Plan:
    n: int
    parts: list[Part]
    mask: np.ndarray | None = None  # A/B: True where the row goes to the challenger


@dataclass(eq=False)
class Scored:
    proba: np.ndarray
    labels: np.ndarray
    threshold: float
    variants: list[str] | None  # per row, in A/B mode
    variant: str  # champion, challenger or mixed
    model: ServedModel  # of the answer (the champion's when mixed)


class Router:
    """Sends each request's rows to the champion, the challenger or both.

    A/B: a row goes to the challenger when ``route_share(salt, key) < weight``; the key is
    the row's entity id (``--entity-column``), else the request's X-Entity-ID header, else
    its request id (not sticky). A request split between variants is scored as two blocks
    at once and put back in row order. Shadow: the champion answers; the challenger scores
    the same rows in the background, logged with shadow=1, its failures only counted.
    """

    def __init__(
        self,
        champion: MicroBatcher,
        challenger: MicroBatcher | None,
        routing: Routing,
        metrics: ServerMetrics,
    ):
        if (challenger is None) != (routing.mode is None):
            raise ServeError("Router: a challenger goes with a routing mode, and only with it")
        self.champion, self.challenger = champion, challenger
        self.routing = routing
        self.mode, self.weight, self.salt = routing.mode, routing.weight, routing.salt
        self.metrics = metrics
        self._shadow_warned = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode or "single",
            "weight": self.weight,
            "salt": self.salt if self.mode == "ab" else None,
            "entity_column": self.routing.entity_column,
        }

    def prepare(self, block: Batch, request_id: str, header_entity: str | None) -> Plan:
        """Decide where each row goes (by its entity id, split off at parse time). Pure
        CPU, run off the event loop with the parsing for big bodies."""
        entity = block.entity
        meta = None
        if self.routing.log_rows:
            meta = RowMeta(request_id, None, entity if entity is not None else header_entity)
        if self.mode != "ab":
            return Plan(block.n, [Part(self.champion, block, meta)])
        assert self.challenger is not None and self.weight is not None
        fallback = header_entity or request_id
        if entity is None:
            to_challenger = route_share(self.salt, fallback) < self.weight
            return Plan(
                block.n, [Part(self.challenger if to_challenger else self.champion, block, meta)]
            )
        salt, weight = self.salt, self.weight
        mask = np.fromiter(
            (route_share(salt, fallback if v is None else str(v)) < weight for v in entity),
            dtype=bool,
            count=block.n,
        )
        if mask.all() or not mask.any():
            return Plan(
                block.n, [Part(self.challenger if mask[0] else self.champion, block, meta)], mask
            )
        parts = []
        for flag, batcher in ((False, self.champion), (True, self.challenger)):
            index = np.flatnonzero(mask == flag)
            part = block.take(index)
            sub_meta = None if meta is None else RowMeta(request_id, index, part.entity)
            parts.append(Part(batcher, part, sub_meta, index))
        return Plan(block.n, parts, mask)

    async def score(self, plan: Plan) -> Scored:
        ab = self.mode == "ab"
        if len(plan.parts) == 1:
            part = plan.parts[0]
            future = part.batcher.submit(part.block, part.meta)
            if self.mode == "shadow":
                self._shadow(part.block, part.meta)
            scores: Scores = await future
            model = part.batcher.model
            variant = part.batcher.variant
            return Scored(
                scores.proba,
                scores.labels,
                model.threshold,
                [variant] * plan.n if ab else None,
                variant,
                model,
            )
        futures: list[asyncio.Future] = []
        try:
            for part in plan.parts:
                futures.append(part.batcher.submit(part.block, part.meta))
        except RequestError:
            for future in futures:
                future.cancel()
            raise
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        proba = np.empty((plan.n, 2), dtype=np.float64)
        labels = np.empty(plan.n, dtype=int)
        for part, result in zip(plan.parts, results, strict=True):
            proba[part.index] = result.proba
            labels[part.index] = result.labels
        assert plan.mask is not None
        variants = np.where(plan.mask, "challenger", "champion").tolist()
        return Scored(
            proba, labels, self.champion.model.threshold, variants, "mixed", self.champion.model
        )

    def _shadow(self, block: Batch, meta: RowMeta | None) -> None:
        """Score on the challenger without waiting: nothing here reaches the response."""
        assert self.challenger is not None
        try:
            future = self.challenger.submit(block, meta)
        except RequestError as exc:  # challenger overloaded: skip it, never the request
            self._shadow_failed(exc)
            return
        future.add_done_callback(self._shadow_done)

    def _shadow_done(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._shadow_failed(future.exception())

    def _shadow_failed(self, exc: BaseException | None) -> None:
        self.metrics.shadow_failures.inc()
        now = time.monotonic()
        if now - self._shadow_warned > 60:  # at most a line a minute under a failure storm
            self._shadow_warned = now
            log.warning("shadow scoring on the challenger failed: %s", exc)
