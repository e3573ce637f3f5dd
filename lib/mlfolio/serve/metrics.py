"""Prometheus metrics of the server, the prediction log's counts, the monitor's drift
gauges and the A/B report's gauges, collected at scrape time."""

from __future__ import annotations

import json
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlfolio.predlog import PredictionLog

if TYPE_CHECKING:
    from mlfolio.serve.model import ServedModel

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
SCORE_BUCKETS = tuple(round(0.05 * k, 2) for k in range(1, 20)) + (1.0,)


class _ScoreHistogram:
    """A Prometheus histogram of prediction scores, updated a batch at a time
    (prometheus_client's Histogram takes one observation per call): bisect for a few
    scores, NumPy for many."""

    def __init__(self, name: str, doc: str, labels: dict[str, str], buckets: tuple[float, ...]):
        self.name, self.doc, self.labels = name, doc, labels
        self.edges = np.asarray(buckets, dtype=np.float64)
        self._edges = [float(e) for e in buckets]
        self.counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative
        self.total = 0.0
        self.lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        if len(values) <= 32:
            scores = values.tolist()
            edges, top = self._edges, len(self._edges)
            # searchsorted(side="left"), which puts NaN past the last edge
            slots = [bisect_left(edges, v) if v == v else top for v in scores]
            total = sum(scores)
            with self.lock:
                counts = self.counts
                for k in slots:
                    counts[k] += 1
                self.total += total
            return
        binned = np.bincount(
            np.searchsorted(self.edges, values, side="left"), minlength=len(self.counts)
        ).tolist()
        total = float(np.sum(values))
        with self.lock:
            self.counts = [a + b for a, b in zip(self.counts, binned, strict=True)]
            self.total += total

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        with self.lock:
            cumulative, total = list(accumulate(self.counts)), self.total
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        buckets = [
            (floatToGoString(e), float(c)) for e, c in zip(self.edges, cumulative, strict=False)
        ]
        buckets.append(("+Inf", float(cumulative[-1])))
        family.add_metric(list(self.labels.values()), buckets, total)
        yield family


class ServerMetrics:
    """The server's Prometheus registry; every family carries model and version labels."""

    def __init__(self, model: ServedModel):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        base = ["model", "version"]
        self.base = (model.name, model.version)
        reg = self.registry
        self.requests = Counter(
            "mlfolio_requests",
            "HTTP requests by route and status code",
            [*base, "route", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "mlfolio_request_duration_seconds",
            "Time from request to response, by route",
            [*base, "route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_rows = Histogram(
            "mlfolio_batch_rows",
            "Rows per predict_proba call",
            base,
            buckets=ROW_BUCKETS,
            registry=reg,
        ).labels(*self.base)
        self.batch_requests = Histogram(
            "mlfolio_batch_requests",
            "Requests scored together in one predict_proba call",
            base,
            buckets=REQUEST_BUCKETS,
            registry=reg,
        ).labels(*self.base)
        self.batch_seconds = Histogram(
            "mlfolio_batch_duration_seconds",
            "Time of one predict_proba call",
            base,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ).labels(*self.base)
        self.predictions = Counter(
            "mlfolio_predictions", "Rows scored, by predicted label", [*base, "label"], registry=reg
        )
        self.scores = _ScoreHistogram(
            "mlfolio_prediction_score",
            "Predicted probability of the positive class",
            dict(zip(base, self.base, strict=True)),
            SCORE_BUCKETS,
        )
        reg.register(self.scores)
        info = Gauge(
            "mlfolio_model_info",
            "The model being served (value 1)",
            [*base, "alias", "run_id", "scorer"],
            registry=reg,
        )
        info.labels(*self.base, model.alias or "", model.run_id or "", model.scorer.name).set(1)
        self.threshold = Gauge(
            "mlfolio_model_threshold", "Label threshold of the model", base, registry=reg
        )
        self.threshold.labels(*self.base).set(model.threshold)
        self.variant_rows = Counter(
            "mlfolio_variant_rows",
            "Rows scored by each variant (shadow=1: scored alongside the champion, not answered)",
            [*base, "variant", "shadow"],
            registry=reg,
        )
        self.shadow_failures = Counter(
            "mlfolio_shadow_failures",
            "Shadow scorings that failed or were skipped (never seen by clients)",
            base,
            registry=reg,
        ).labels(*self.base)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._by_label: dict[str, Any] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(*self.base, route, str(status)),
                self.latency.labels(*self.base, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def batch(
        self, rows: int, requests: int, seconds: float, scores: np.ndarray, labels: np.ndarray
    ) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)
        self.scores.observe_many(scores)
        positive = int(np.count_nonzero(labels))
        if positive:
            self._predicted("1").inc(positive)
        if rows - positive:
            self._predicted("0").inc(rows - positive)

    def _predicted(self, label: str) -> Any:
        """The predictions counter of ``label``, looked up once (``labels()`` takes a lock
        and builds a key: a few µs of every batch), created on first use as before."""
        child = self._by_label.get(label)
        if child is None:
            child = self._by_label[label] = self.predictions.labels(*self.base, label)
        return child

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class PredlogCollector:
    """Prometheus counters read from the prediction log's own counts at scrape time."""

    def __init__(self, predlog: PredictionLog, labels: dict[str, str]):
        self.predlog, self.labels = predlog, labels

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.predlog.stats()
        names, values = list(self.labels), list(self.labels.values())
        for key, doc in (
            ("rows_written", "Rows committed to the prediction log"),
            ("rows_dropped", "Rows the prediction log dropped (queue full or write error)"),
        ):
            family = CounterMetricFamily(f"mlfolio_prediction_log_{key}", doc, labels=names)
            family.add_metric(values, stats[key])
            yield family
        queued = GaugeMetricFamily(
            "mlfolio_prediction_log_rows_queued",
            "Rows waiting to be written to the prediction log",
            labels=names,
        )
        queued.add_metric(values, stats["rows_queued"])
        yield queued


def _drift_families(doc: dict[str, Any]) -> list[Any]:
    from mlfolio.monitor import drift_gauge_families

    return drift_gauge_families(doc)


def _ab_families(doc: dict[str, Any]) -> list[Any]:
    from mlfolio.monitor import ab_gauge_families

    return ab_gauge_families(doc)


class JsonGaugeCollector:
    """Gauges computed from a JSON file next to the prediction log (``to_families`` turns
    the document into metric families); re-read only when the file changes."""

    def __init__(self, path: Path, what: str, to_families: Callable[[dict[str, Any]], list[Any]]):
        self.path, self.what, self.to_families = path, what, to_families
        self._key: tuple[int, int, int] | None = None
        self._families: list[Any] = []
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def _once(self, what: str, level: int, message: str, *args: Any) -> None:
        if what not in self._logged:
            self._logged.add(what)
            log.log(level, message, *args)

    def collect(self) -> Iterable[Any]:
        with self._lock:
            try:
                st = self.path.stat()
            except OSError:
                self._key, self._families = None, []
                self._once(
                    "missing",
                    logging.INFO,
                    "no %s yet: no %s gauges on /metrics",
                    self.path,
                    self.what,
                )
                return []
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key != self._key:
                self._key = key
                try:
                    doc = json.loads(self.path.read_text())
                    if not isinstance(doc, dict):
                        raise ValueError("not a JSON object")
                    self._families = list(self.to_families(doc))
                except (
                    OSError,
                    ValueError,
                    TypeError,
                    KeyError,
                    AttributeError,
                    ImportError,
                ) as exc:
                    self._families = []
                    self._once(
                        f"bad {key}",
                        logging.WARNING,
                        "%s unreadable, no %s gauges: %s",
                        self.path,
                        self.what,
                        exc,
                    )
            return list(self._families)


class DriftCollector(JsonGaugeCollector):
    """The latest monitor verdict (``drift.json`` next to the prediction log, a
    :class:`mlfolio.monitor.DriftDoc`) as gauges, via
    :func:`mlfolio.monitor.drift_gauge_families`; a file the model refuses gives none."""

    def __init__(self, path: Path):
        super().__init__(path, "drift", _drift_families)


class AbCollector(JsonGaugeCollector):
    """The latest A/B report (``ab.json`` next to the prediction log) as gauges, via
    :func:`mlfolio.monitor.ab_gauge_families`."""

    def __init__(self, path: Path):
        super().__init__(path, "A/B", _ab_families)
