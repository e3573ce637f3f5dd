"""Every file a stage hands over, declared once (in the spirit of Kedro's data catalog).

A :class:`Product` names its path in the run folder, the stage that writes it, its format
and, for JSON, the pydantic model its content must match. Stages write and read products
through these declarations (``ctx.write(EVALUATE, doc)``, ``ctx.read(EVALUATE).gate``);
the runner derives each stage's outputs from them, copies each product's ``summary`` into
the manifest under ``manifest_key``, and the report reads them the same way. Adding a
stage is a declaration here plus its function and notebook.

The models type the fields other code relies on and allow the rest (``extra="allow"``),
so a stage may add detail to its product without a schema change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from mlfolio.errors import StageError
from mlfolio.files import read_json


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- the JSON documents -----------------------------------------------------------------
class IngestDoc(_Doc):
    source: str
    data_hash: str
    rows: int
    positive_rate: float
    dropped_missing_target: int = 0
    quality: dict[str, Any] | None = None  # data.quality(): missing, blanks, duplicates


class PreprocessDoc(_Doc):
    splits: dict[str, dict[str, Any]]
    files: dict[str, str]


class TrainedModel(_Doc):
    name: str
    kind: str
    params: dict[str, Any]
    model_uri: str
    run_id: str
    valid: dict[str, float | None]  # None: undefined (precision with no predicted positive)


class TrainDoc(_Doc):
    models: dict[str, TrainedModel]


class TuneDoc(_Doc):
    enabled: bool
    models: dict[str, TrainedModel] = {}


class GateVerdict(_Doc):
    passed: bool
    reasons: list[str]
    same_model_as: str | None = None  # the candidate is this champion version's model


class Candidate(_Doc):
    name: str
    model_uri: str
    run_id: str
    valid: dict[str, float | None]
    test: dict[str, float | None]


class ChampionScores(_Doc):
    version: str
    run_id: str | None = None
    test: dict[str, float | None]
    threshold: float | None = None  # its own (None: written before evaluate read it)
    threshold_source: str | None = None  # the version tag, its run folder, or "unknown ..."


class EvaluateDoc(_Doc):
    candidate: Candidate
    threshold: float
    champion: ChampionScores | None
    comparison: dict[str, Any] | None
    gate: GateVerdict
    # Written since the model was explained (older evaluate.json files have none):
    # explain: model -> attribution method, mean |attribution| and permutation importance
    # per raw column; segments: metrics per segment, flagged where the candidate is worse.
    explain: dict[str, Any] | None = None
    segments: dict[str, Any] | None = None
    threshold_curve: dict[str, list[float | None]] | None = None  # None: undefined there
    # Since the label-free estimate (mlfolio.estimate): the score -> probability map shipped
    # with the candidate's run, why that method, its quality on validation and test rows.
    performance_calibration: dict[str, Any] | None = None
    intervals: dict[str, Any] | None = None
    # With a champion (since the gate compared on unseen rows only): the test rows it never
    # saw, the overlap its lineage showed (found, excluded, remaining: 0), each row set's
    # comparison (unseen_test; out_of_time with evaluation.recent_rows) and which decided.
    rows_unseen_by_champion: int | None = None
    champion_overlap: dict[str, Any] | None = None
    row_sets: dict[str, dict[str, Any]] | None = None
    decided_by: Literal["unseen_test", "out_of_time"] | None = None
    recent_rows: dict[str, Any] | None = None


class RegisterDoc(_Doc):
    model_name: str
    version: str | None
    model_uri: str | None
    registered: bool = True
    promoted: bool
    why_not_promoted: str | None
    pending_approval: bool = False  # registry.require_approval: @pending-approval, not champion
    approval: dict[str, Any] | None = None
    compared_against: str | None = None
    champion: str | None
    alias_events: list[dict[str, Any]]


class DeployDoc(_Doc):
    model_name: str
    version: str | None  # None: nothing deployed (why_not_deployed says why)
    alias: str
    model_uri: str | None
    targets: dict[str, Any]
    why_not_deployed: str | None = None


# What a deploy target's ``status`` says happened, in the words the index page and the
# terminal use. Only ``serving`` and ``deployed`` mean something answers requests.
DEPLOY_OUTCOMES = {
    "serving": "serving at {url}",
    "checked": "checked, then stopped",
    "written": "manifests written (not applied)",
    "deployed": "deployed",
    "failed": "failed",
}
LIVE = ("serving", "deployed")
# deploy.json files written before the targets said how far they went called both
# "deployed": the local server was always stopped, the manifests never applied.
_LEGACY = {"local": "checked", "kubernetes": "written"}


def deploy_status(target: str, doc: dict[str, Any]) -> str:
    """A target's status in ``deploy.json`` (read honestly from older files too)."""
    status = doc.get("status", "deployed")
    return _LEGACY.get(target, status) if status == "deployed" else status


def deploy_outcome(target: str, doc: dict[str, Any]) -> str:
    """What happened at ``target``, in words: ``checked, then stopped``, ``serving at
    http://127.0.0.1:8080``, ``manifests written (not applied)``, ``deployed`` (a
    SageMaker endpoint on Serverless Inference says so, with its memory)."""
    status = deploy_status(target, doc)
    outcome = DEPLOY_OUTCOMES.get(status, status).format(url=doc.get("url", "?"))
    variant = doc.get("variant")
    if status == "deployed" and isinstance(variant, dict) and variant.get("kind") == "serverless":
        sized = doc.get("serverless_sizing") or {}
        peak = sized.get("measured_peak_rss_mb")
        how = f", sized from a {peak:.0f} MB peak" if isinstance(peak, int | float) else ""
        outcome += (
            f" (Serverless Inference, {variant.get('memory_mb')} MB{how}, "
            f"up to {variant.get('max_concurrency')} at once)"
        )
    return outcome


class RetrainDecisionDoc(_Doc):
    retrain: bool
    reasons: list[str]


class MonitorDoc(_Doc):
    model: dict[str, Any]
    current: dict[str, Any]
    share_drifted: float
    drifted_columns: list[str]
    dataset_drift: bool
    prediction_drift: bool
    quality: dict[str, Any] | None
    performance_estimate: dict[str, Any] | None = None  # label-free (mlfolio.estimate)
    decision: RetrainDecisionDoc
    reports: dict[str, str]
    retrain_data: str | None
    retrain_new_rows: str | None = None  # keys of the newly labelled rows (out-of-time)


class Recommendation(_Doc):
    action: Literal["promote", "keep", "roll back"]
    summary: str = ""
    reasons: list[str] = []


class AbDoc(_Doc):
    design: str
    recommendation: Recommendation
    # comparison.sequential (the always-valid test) exists since issue 24; older files lack it
    comparison: dict[str, Any] | None = None


# -- the declarations -------------------------------------------------------------------
@dataclass(frozen=True)
class Product:
    """One file a stage writes into the run folder."""

    path: str
    stage: str
    model: type[_Doc] | None = None  # JSON products: what the content must match
    manifest_key: str | None = None  # the runner copies ``summary(doc)`` there
    summary: Callable[[Any], Any] | None = None
    # Its numbers, flat (name -> number), for a KFP task's Output[Metrics].
    metrics: Callable[[Any], dict[str, Any]] | None = None

    @property
    def kind(self) -> str:
        return Path(self.path).suffix.lstrip(".")

    def parse(self, payload: Any, where: str) -> Any:
        """``payload`` as this product's model; a mismatch names the product and field."""
        if self.model is None:
            return payload
        try:
            return self.model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(document)"
            raise StageError(
                self.stage, f"{where}: {self.path} field {field}: {first['msg']}"
            ) from None

    def load(self, run_dir: Path) -> Any:
        """Read and validate this product from ``run_dir``; None when it is not there."""
        path = run_dir / self.path
        if not path.exists():
            return None
        return self.parse(read_json(path), str(path))


def _dump(doc: BaseModel, *keys: str) -> dict[str, Any]:
    data = doc.model_dump(mode="json")
    return {k: data[k] for k in keys if k in data}


SNAPSHOT = Product("data/snapshot.parquet", "ingest")


def _valid_scores(doc: TrainDoc | TuneDoc) -> dict[str, Any]:
    out = {f"{n}.valid.{k}": v for n, m in (doc.models or {}).items() for k, v in m.valid.items()}
    if isinstance(best := getattr(doc, "best_cv_roc_auc", None), float):  # tune's study
        out["best_cv_roc_auc"] = best
    return out


INGEST = Product(
    "ingest.json",
    "ingest",
    IngestDoc,
    "data",
    lambda d: _dump(d, "source", "rows", "positive_rate", "dropped_missing_target", "quality"),
    metrics=lambda d: {"rows": d.rows, "positive_rate": d.positive_rate},
)
SPLITS = {
    name: Product(f"data/{name}.parquet", "preprocess") for name in ("train", "valid", "test")
}
# The keys of the rows this run's models saw (train + valid), logged with every model
# (mlfolio.lineage): a later run's gate leaves them out of its comparison with this one.
SEEN_ROWS = Product("data/seen_rows.parquet", "preprocess")
PREPROCESS = Product("preprocess.json", "preprocess", PreprocessDoc)
TRAIN = Product("train.json", "train", TrainDoc, metrics=_valid_scores)
TUNE = Product("tune.json", "tune", TuneDoc, metrics=_valid_scores)
EVALUATE = Product(
    "evaluate.json",
    "evaluate",
    EvaluateDoc,
    "candidate",
    lambda d: {"name": d.candidate.name, "test": d.candidate.test},
    metrics=lambda d: {
        **{f"test.{k}": v for k, v in d.candidate.test.items()},
        "threshold": d.threshold,
        "gate_passed": float(d.gate.passed),
    },
)
TEST_SCORES = Product("data/test_scores.parquet", "evaluate")
ATTRIBUTIONS = Product("data/attributions.parquet", "evaluate")
# Register's product: evaluate writes a first one, register completes it with the version
# (were it evaluate's, register's rewrite would stop evaluate from ever being reused).
MODEL_CARD = Product("model_card.md", "register")
REGISTER = Product(
    "register.json",
    "register",
    RegisterDoc,
    "model",
    lambda d: _dump(
        d,
        "model_name",
        "version",
        "model_uri",
        "registered",
        "duplicate_of",
        "promoted",
        "why_not_promoted",
        "pending_approval",
        "approval",
        "compared_against",
        "champion",
        "status",
        "rolled_back",
    ),
    metrics=lambda d: {
        "promoted": float(d.promoted),
        **({"version": float(d.version)} if d.version and str(d.version).isdigit() else {}),
    },
)
DEPLOY = Product(
    "deploy.json",
    "deploy",
    DeployDoc,
    "deploy",
    lambda d: _dump(
        d, "model_name", "version", "alias", "model_uri", "targets", "why_not_deployed"
    ),
)
DRIFT = Product("drift.json", "monitor")
MONITOR = Product(
    "monitor.json",
    "monitor",
    MonitorDoc,
    "monitor",
    lambda d: _dump(
        d,
        "model",
        "current",
        "share_drifted",
        "drifted_columns",
        "dataset_drift",
        "prediction_drift",
        "quality",
        "performance_estimate",
        "decision",
        "reports",
        "report_drift",
        "n_drifted",
        "n_columns",
        "retrain_data",
        "retrain_new_rows",
    ),
)
DRIFT_REPORT = Product("drift_report.html", "monitor")
# With labelled rows only: the classification quality report beside the drift one.
QUALITY_REPORT = Product("quality_report.html", "monitor")
# drift.json's numbers in the Prometheus text format, for node_exporter's textfile collector.
DRIFT_PROM = Product("drift.prom", "monitor")
CURRENT_DATA = Product("data/current.parquet", "monitor")
# Written when retraining fires: the retraining run's data (the champion's rows plus the
# newly labelled ones) and the keys of the new rows (its evaluation.recent_rows).
RETRAIN_DATA = Product("data/retrain.parquet", "monitor")
RETRAIN_NEW_ROWS = Product("data/retrain_new_rows.parquet", "monitor")
AB = Product("ab.json", "ab_report", AbDoc, "ab", lambda d: _dump(d, "design", "recommendation"))

ALL: tuple[Product, ...] = (
    SNAPSHOT,
    INGEST,
    *SPLITS.values(),
    SEEN_ROWS,
    PREPROCESS,
    TRAIN,
    TUNE,
    EVALUATE,
    TEST_SCORES,
    ATTRIBUTIONS,
    REGISTER,
    MODEL_CARD,
    DEPLOY,
    DRIFT,
    MONITOR,
    DRIFT_REPORT,
    QUALITY_REPORT,
    DRIFT_PROM,
    CURRENT_DATA,
    RETRAIN_DATA,
    RETRAIN_NEW_ROWS,
    AB,
)
BY_PATH = {p.path: p for p in ALL}


def of_stage(stage: str) -> tuple[str, ...]:
    """The paths a stage writes into the run folder, in declaration order (a training
    stage leaves every one; the monitor writes the quality report and the retraining data
    only when it has labelled rows)."""
    return tuple(p.path for p in ALL if p.stage == stage)


def document(stage: str) -> Product | None:
    """The stage's own JSON document: the product whose model it validates, stamped with
    the stage's ``mlflow_run_id`` when written (``ab.json`` for ab_report); None when the
    stage writes none."""
    return next((p for p in ALL if p.stage == stage and p.model is not None), None)


def producer(path: str) -> str | None:
    """The stage that writes ``path`` (None: not a declared product)."""
    product = BY_PATH.get(path)
    return product.stage if product else None


def collect(run_dir: Path) -> dict[str, Any]:
    """The manifest's summary of every product in ``run_dir`` that declares one, plus the
    data hash and the gate verdict (the facts a reviewer reads first)."""
    out: dict[str, Any] = {}
    for product in ALL:
        if product.manifest_key is None:
            continue
        doc = product.load(run_dir)
        if doc is None:
            continue
        out[product.manifest_key] = product.summary(doc)
        if product is INGEST:
            out["data_hash"] = doc.data_hash
        if product is EVALUATE:
            out["gate"] = doc.gate.model_dump(mode="json")
    return out
