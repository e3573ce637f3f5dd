"""Typed, validated, frozen run configuration loaded from a YAML parameter file.

A parameter file is validated once, at the boundary: unknown keys, wrong types and
missing files fail here with the file, the key path and what was expected. Every later
step receives a frozen :class:`Config`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from mlfolio.config.base import SQL_PREFIXES, _Section, project_dir
from mlfolio.config.operations import (
    TARGET_NAMES,
    ABConfig,
    AlertsConfig,
    AwsConfig,
    DeployConfig,
    EstimateConfig,
    KfpConfig,
    KfpResources,
    KubernetesTargetConfig,
    LambdaTargetConfig,
    LocalTargetConfig,
    MonitoringConfig,
    RetrainPolicyConfig,
    SagemakerConfig,
    SagemakerServerlessConfig,
    SagemakerTargetConfig,
    StageRunConfig,
    StagesConfig,
)
from mlfolio.errors import ConfigError

# re-exported: every section is importable from mlfolio.config
__all__ = [
    "SQL_PREFIXES",
    "project_dir",
    "ABConfig",
    "AlertsConfig",
    "AwsConfig",
    "DeployConfig",
    "EstimateConfig",
    "TARGET_NAMES",
    "KfpConfig",
    "KfpResources",
    "SagemakerConfig",
    "StageRunConfig",
    "StagesConfig",
    "KubernetesTargetConfig",
    "LambdaTargetConfig",
    "LocalTargetConfig",
    "MonitoringConfig",
    "RetrainPolicyConfig",
    "SagemakerServerlessConfig",
    "SagemakerTargetConfig",
]


class DataConfig(_Section):
    """Where the raw data comes from."""

    uri: str = Field(description="CSV/Parquet path, s3://bucket/key, or a SQLAlchemy URL")
    query: str | None = Field(None, description="SQL query; required when uri is a database URL")
    endpoint_url: str | None = Field(None, description="S3 endpoint (moto, MinIO); None = AWS")
    sample_rows: int | None = Field(None, gt=0, description="seeded sample of rows, for quick runs")
    encoding: str = Field(
        "utf-8",
        description="text encoding of a CSV file or object (latin-1, cp1252, utf-16, ...); "
        "a byte it cannot decode fails naming the file, byte offset and line",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                "unknown encoding; expected a Python codec name such as utf-8, latin-1, "
                "cp1252 or utf-16"
            ) from None
        return value

    @property
    def kind(self) -> Literal["sql", "s3", "file"]:
        if self.uri.startswith(SQL_PREFIXES):
            return "sql"
        if self.uri.startswith("s3://"):
            return "s3"
        return "file"

    @model_validator(mode="after")
    def _query_matches_kind(self) -> DataConfig:
        if self.kind == "sql" and not self.query:
            raise ValueError("a database uri needs 'query' (the SQL that selects the rows)")
        if self.kind != "sql" and self.query:
            raise ValueError("'query' is only used with a database uri (sqlite:///, postgresql://)")
        if self.kind in ("file", "s3") and not self.uri.lower().endswith(
            (".csv", ".parquet", ".pq")
        ):
            raise ValueError(f"uri {self.uri!r} must end in .csv or .parquet")
        return self


class SchemaConfig(_Section):
    """What the data must look like: the contract the ingest stage enforces."""

    target: str = Field(description="the column to predict (two values)")
    positive_label: str | int | bool = Field(description="the target value the model scores")
    negative_label: str | int | bool = Field(description="the target's other value")
    id_column: str | None = Field(
        None, description="a unique id per row (never a feature); keys the split and the labels"
    )
    numeric: list[str] = Field(default_factory=list, description="numeric feature columns")
    categorical: list[str] = Field(
        default_factory=list, description="categorical feature columns (one-hot encoded)"
    )
    missing_target: Literal["drop", "fail"] = Field(
        "drop", description="rows with no target value: dropped and counted, or an error"
    )
    non_finite: Literal["fail", "missing"] = Field(
        "fail",
        description="inf, -inf or numbers too large for a float in numeric columns: "
        "an error, or treated as missing values",
    )
    all_missing: Literal["fail", "ignore"] = Field(
        "fail",
        description="a feature column with no value in any row: an error naming it, or a "
        "warning (the model gets it as a constant it cannot use)",
    )

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @model_validator(mode="after")
    def _columns_disjoint(self) -> SchemaConfig:
        if not self.features:
            raise ValueError("list at least one column under 'numeric' or 'categorical'")
        seen: set[str] = set()
        for col in self.features:
            if col in seen:
                raise ValueError(f"column {col!r} is listed twice in numeric/categorical")
            seen.add(col)
        for role in ("target", "id_column"):
            col = getattr(self, role)
            if col is not None and col in seen:
                raise ValueError(f"{role} {col!r} must not also be a feature column")
        if self.positive_label == self.negative_label:
            raise ValueError("positive_label and negative_label must differ")
        return self


class SplitConfig(_Section):
    """How rows are assigned to the train, validation and test splits."""

    method: Literal["hash", "seeded"] = Field(
        "hash",
        description="hash: a row's split comes from a stable hash of its id (schema."
        "id_column; of its feature and target values without one), cut at the same points "
        "for each class, so a row keeps its split for life: adding rows (a retraining on "
        "newly labelled data) never moves one, and the seed does not change it. seeded: a "
        "stratified train_test_split with the run's seed (exact class shares; any change to "
        "the data reshuffles every row)",
    )
    test_size: float = Field(0.2, gt=0, lt=0.5, description="share of the rows for testing")
    valid_size: float = Field(
        0.2, gt=0, lt=0.5, description="share of the rows for validation (model choice, threshold)"
    )


class FeaturesConfig(_Section):
    """How the feature pipeline encodes the schema's columns, and the memory it may take."""

    max_categories: int | None = Field(
        100,
        ge=2,
        description="one-hot columns per categorical column: a column with more levels "
        "keeps its max_categories - 1 most frequent, the rest share one 'infrequent' column "
        "(a warning names the column); None = a column per level",
    )
    min_frequency: int | float | None = Field(
        None,
        gt=0,
        description="levels seen in fewer training rows (an int) or a smaller share of them "
        "(a float below 1) share the 'infrequent' column; None = no minimum",
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=1,
        description="memory the feature matrices of train and tune may take; preprocess "
        "fails, naming the widest columns, when its estimate is larger. None = the memory "
        "available when preprocess runs",
    )

    @field_validator("min_frequency")
    @classmethod
    def _count_or_share(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, float) and value >= 1:
            raise ValueError("a share must be below 1 (or give a whole number of rows)")
        return value


class TrainingConfig(_Section):
    """Baseline models fitted by the train stage."""

    models: list[Literal["logreg", "xgboost"]] = Field(
        default_factory=lambda: ["logreg", "xgboost"],
        description="baseline models fitted; the best on validation becomes the candidate",
    )
    logreg: dict[str, Any] = Field(
        default_factory=lambda: {"C": 1.0, "max_iter": 2000},
        description="keyword arguments of scikit-learn's LogisticRegression",
    )
    xgboost: dict[str, Any] = Field(
        default_factory=lambda: {"n_estimators": 300, "learning_rate": 0.05, "max_depth": 4},
        description="keyword arguments of XGBClassifier",
    )


class TuningConfig(_Section):
    """The Optuna study of the tune stage."""

    enabled: bool = Field(True, description="false: the tune stage is skipped")
    model: Literal["xgboost", "logreg"] = Field("xgboost", description="the model kind tuned")
    n_trials: int = Field(30, ge=1, description="trials of the study (with timeout: first wins)")
    timeout: float | None = Field(None, gt=0, description="seconds; None = no limit")
    cv_folds: int = Field(3, ge=2, le=20, description="cross-validation folds of a trial")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median",
        description="stops hopeless trials: median = below the median of earlier trials at "
        "the same boosting round (xgboost: the folds' mean AUC) / fold; hyperband = "
        "successive halving in brackets; none",
    )
    early_stopping_rounds: int | None = Field(
        20,
        ge=1,
        description="xgboost: stop a fold's boosting after this many rounds without a better "
        "validation AUC; the trial's n_estimators becomes its best round (the refit uses it). "
        "None = always boost n_estimators rounds",
    )
    warm_start: bool | int | Literal["baseline"] = Field(
        True,
        description="true: the first trial is the registry champion's parameters (same "
        "model kind), else the train stage's model (training.<model> over XGBoost's or "
        "scikit-learn's defaults); 'baseline': always the latter; a version number: that "
        "version's (mlfolio reproduce pins what the original started from); false: off",
    )
    subsample_rows: int | None = Field(
        None,
        ge=100,
        description="tune on a seeded stratified sample of this many training rows when "
        "there are more; the best parameters are refitted on all of them. None = never",
    )
    n_workers: int = Field(1, ge=1, description="parallel worker processes on one study")
    fold_threads: int | None = Field(
        None,
        ge=1,
        description="xgboost: threads boosting a trial's CV folds side by side (the study's "
        "trials are the same for any number). None = all cv_folds when each of n_workers "
        "has two cores or more, else 1",
    )
    storage: str | None = Field(
        None,
        description="None = journal file in the run folder; or an RDB URL "
        "(postgresql+psycopg://user@host/db) that workers on other machines can join",
    )
    study_name: str | None = Field(None, description="None = '<experiment>-<run folder>'")
    heartbeat_interval: int = Field(
        10, ge=1, description="seconds between a running trial's heartbeats (RDB storage)"
    )
    grace_period: int | None = Field(
        None,
        ge=1,
        description="seconds without a heartbeat after which a running trial's worker "
        "counts as dead and the trial is failed; None = 2 x heartbeat_interval",
    )

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, value: str | None) -> str | None:
        # The dialects Optuna's RDBStorage is tested on; anything else fails later and
        # less clearly (or, with a typo, would silently be something else).
        if value is not None and not re.match(r"^(sqlite|postgresql|mysql)(\+\w+)?://", value):
            raise ValueError(
                "expected an RDB URL such as postgresql+psycopg://user@host:5432/db, "
                "mysql+pymysql://... or sqlite:////abs/path.db (or leave it unset for a "
                "journal file in the run folder)"
            )
        return value

    @field_validator("warm_start", mode="before")
    @classmethod
    def _bool_or_version(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value >= 1 or value == "baseline":
            return value
        raise ValueError(
            "expected true, false, 'baseline' or a registered version number (1, 2, ...)"
        )

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> TuningConfig:
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period} s) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval} s), or live trials are failed between beats"
            )
        return self


class EvaluationConfig(_Section):
    """The evaluate stage: threshold, calibration, explanations and the error analysis."""

    threshold: float | Literal["max_f1"] = Field(
        0.5, description="decision threshold, or max_f1 to choose it on the validation split"
    )
    calibration_bins: int = Field(10, ge=2, le=50, description="bins of the calibration curve")
    calibration_method: Literal["auto", "platt", "isotonic"] = Field(
        "auto",
        description="score -> probability map fitted on the validation rows and shipped with "
        "the model version, for the monitor's label-free performance estimate (CBPE): "
        "auto = Platt unless isotonic's cross-validated Brier score is over 1% lower",
    )
    champion_version: int | Literal["none"] | None = Field(
        None,
        description="what the candidate is compared with: None = the version the champion "
        "alias points at when evaluate runs; a version number = that version (mlfolio "
        "reproduce pins the original's); 'none' = no champion (the gate judges the "
        "candidate alone)",
    )
    explain_rows: int = Field(
        2000,
        ge=100,
        description="test rows sampled for attributions, permutation importance and the "
        "beeswarm (bounds evaluate's added time)",
    )
    permutation_repeats: int = Field(
        5, ge=1, le=50, description="shuffles per column of the permutation importance"
    )
    segment_columns: list[str] | None = Field(
        None,
        description="categorical columns of the error analysis by segment; None: the "
        "segment_count categorical columns the candidate relies on most",
    )
    segment_count: int = Field(
        2, ge=0, le=20, description="categorical columns chosen when segment_columns is None"
    )
    segment_min_rows: int = Field(
        30, ge=1, description="test rows a segment needs to be in the table"
    )
    segment_min_positives: int = Field(
        20,
        ge=1,
        description="positive and negative test rows (each) a segment needs before the "
        "candidate is judged worse than the champion there; fewer: shown, not judged",
    )
    recent_rows: str | None = Field(
        None,
        description="Parquet file of the newest labelled rows' keys (column row_key, as "
        "mlfolio.rowkeys.row_keys computes them): both models are also compared on those of "
        "them in the test split that neither saw (out-of-time), and that comparison decides "
        "the gate when it has gate.min_unseen_rows rows. The monitor sets it for the "
        "retraining it fires",
    )

    @field_validator("champion_version", mode="before")
    @classmethod
    def _version_or_none(cls, value: Any) -> Any:
        if value is None or value == "none":
            return value
        text = str(value)
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            raise ValueError("expected a registered version number (1, 2, ...) or 'none'")
        return int(text)

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError("threshold must be between 0 and 1 (exclusive), or 'max_f1'")
        return value


class GateConfig(_Section):
    """When a candidate may become champion."""

    min_roc_auc: float = Field(0.75, ge=0, le=1, description="the candidate's test ROC AUC floor")
    min_pr_auc: float | None = Field(
        None, ge=0, le=1, description="test PR AUC floor; None = not checked"
    )
    max_log_loss: float | None = Field(
        None, gt=0, description="test log loss ceiling; None = not checked"
    )
    min_improvement: float = Field(
        0.0, description="required ROC AUC gain over the champion (lower CI bound)"
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="of the bootstrap interval of the gain"
    )
    bootstrap_samples: int = Field(1000, ge=100, description="resamples of the paired bootstrap")
    min_unseen_rows: int = Field(
        200,
        ge=1,
        description="test rows the champion never trained, tuned or chose its threshold on "
        "that the comparison with it needs (its train/valid rows, known from its lineage, are "
        "left out of the comparison); fewer: the gate refuses to promote",
    )
    bootstrap_rows: int | None = Field(
        20_000,
        ge=1000,
        description="test rows the bootstrap resamples: above, a seeded stratified sample of "
        "this many, its spread rescaled by sqrt(sample / rows) (m-out-of-n bootstrap), so "
        "time and memory stay bounded. None = every row",
    )


class RegistryConfig(_Section):
    """The MLflow model registry: the model's name, promotion and its lock."""

    model_name: str | None = Field(None, description="None = '<experiment>-classifier'")
    promote: bool = Field(True, description="move 'champion' when the gate passes")
    lock_uri: str | None = Field(
        None,
        description="where promotions lock (None: beside a SQLite store, an advisory "
        "lock in a PostgreSQL one, a lease tag on a tracking server); "
        "a postgresql:// URL gives a strict lock to a tracking server",
    )
    lock_timeout_s: float = Field(60.0, gt=0, description="wait for the promotion lock")
    interactive_writes: bool = Field(
        False,
        description="let a notebook run without a run folder (JupyterLab) register a "
        "version and move aliases",
    )
    require_approval: bool = Field(
        False,
        description="a candidate that passed the gate becomes 'pending-approval' (alias "
        "and version tag) instead of champion; `mlfolio approve` moves champion",
    )
    approval_sla: str = Field(
        "48h",
        pattern=r"^[0-9]+[smhdw]$",
        description="how long an approval may stay pending before the "
        "MlfolioApprovalOverdue alert fires (e.g. 30m, 48h, 7d)",
    )

    @property
    def approval_sla_s(self) -> float:
        """``approval_sla`` in seconds."""
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[self.approval_sla[-1]]
        return float(self.approval_sla[:-1]) * unit


class TrackingConfig(_Section):
    """Where MLflow runs and artifacts go, and how long a call to the store may try."""

    tracking_uri: str | None = Field(
        None,
        description="None = $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db; a "
        "relative sqlite:///path is the project's",
    )
    artifact_location: str | None = Field(None, description="None = <project>/mlartifacts")
    experiment_name: str | None = Field(None, description="None = the experiment key")
    ui_url: str = Field("http://127.0.0.1:5000", description="base URL of `mlflow ui` for links")
    # MLflow's own defaults (7 retries, 120 s) keep a call to a stopped server going ~10 min.
    request_retries: int = Field(
        3, ge=0, le=10, description="retries of a tracking-server request (MLflow's limit: 10)"
    )
    request_timeout_s: int = Field(
        60, ge=1, description="seconds one tracking-server request may take"
    )
    sqlite_busy_timeout_s: float = Field(
        20.0, ge=0, description="seconds a call waits on a SQLite store another process locked"
    )


class Config(_Section):
    """One run's parameters, validated and frozen."""

    experiment: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="the experiment's name: run folders, MLflow experiment, model name",
    )
    description: str = Field("", description="one line shown on the run's report")
    seed: int = Field(42, description="seeds sampling, splits, models and the bootstrap")
    data: DataConfig
    schema_: SchemaConfig = Field(alias="schema")
    split: SplitConfig = Field(default_factory=SplitConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    kfp: KfpConfig = Field(default_factory=KfpConfig)
    sagemaker: SagemakerConfig = Field(default_factory=SagemakerConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _spot_waits_for_the_run(self) -> Config:
        self.sagemaker.check_run_bound("tune", self.stages.tune.timeout_s)
        return self

    @model_validator(mode="after")
    def _segments_are_categorical(self) -> Config:
        wrong = [
            c for c in self.evaluation.segment_columns or [] if c not in self.schema_.categorical
        ]
        if wrong:
            raise ValueError(
                f"evaluation.segment_columns: {wrong} not in schema.categorical "
                f"({', '.join(self.schema_.categorical)})"
            )
        return self

    @property
    def schema(self) -> SchemaConfig:  # type: ignore[override]
        return self.schema_

    @property
    def model_name(self) -> str:
        return self.registry.model_name or f"{self.experiment}-classifier"

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment_name or self.experiment

    def tracking_uri(self) -> str:
        """The MLflow tracking URI this run uses; a relative SQLite path is the project's
        (kernels run in the run folder: a relative one would open a new store there)."""
        uri = self.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            return f"sqlite:///{project_dir() / 'mlflow.db'}"
        return _resolve_path(uri, project_dir()) if uri.startswith("sqlite:///") else uri

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as in a parameter file (round-trips through :func:`from_mapping`)."""
        return self.model_dump(mode="json", by_alias=True)


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for err in exc.errors():
        path = (
            ".".join(
                {"schema_": "schema", "lambda_": "lambda"}.get(str(p), str(p)) for p in err["loc"]
            )
            or "<top>"
        )
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see parameters/churn.yaml for the keys)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        detail = f" (got {got!r})" if err["type"] not in ("missing", "extra_forbidden") else ""
        if isinstance(got, dict | list):
            detail = ""
        lines.append(f"  {path}: {msg}{detail}")
    return "\n".join(lines)


def _resolve_path(uri: str, base: Path) -> str:
    if uri.startswith(("s3://", *SQL_PREFIXES)) or Path(uri).is_absolute():
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            rel = uri.removeprefix("sqlite:///")
            if rel and rel != ":memory:":
                return f"sqlite:///{(base / rel).resolve()}"
        return uri
    return str((base / uri).resolve())


def from_mapping(raw: Any, source: str = "<parameters>", base: Path | None = None) -> Config:
    """Validate a parameter mapping; relative paths resolve against ``base`` (the project)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of parameters, got {type(raw).__name__}")
    base = base or project_dir()
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    data = cfg.data.model_copy(update={"uri": _resolve_path(cfg.data.uri, base)})
    if data.kind == "file" and not Path(data.uri).is_file():
        raise ConfigError(f"{source}: data.uri: file not found: {data.uri}")
    if data.kind == "sql" and data.uri.startswith("sqlite:///"):
        db = data.uri.removeprefix("sqlite:///")
        if db != ":memory:" and not Path(db).is_file():
            raise ConfigError(f"{source}: data.uri: SQLite database not found: {db}")
    mon = cfg.monitoring
    updates = {
        key: _resolve_path(getattr(mon, key), base)
        for key in ("prediction_log", "current", "labels")
        if getattr(mon, key)
    }
    for key in ("current", "labels"):
        if key in updates and not Path(updates[key]).is_file():
            raise ConfigError(f"{source}: monitoring.{key}: file not found: {updates[key]}")
    if updates:
        cfg = cfg.model_copy(update={"monitoring": mon.model_copy(update=updates)})
    recent = cfg.evaluation.recent_rows
    if recent:
        recent = _resolve_path(recent, base)
        if not Path(recent).is_file():
            raise ConfigError(f"{source}: evaluation.recent_rows: file not found: {recent}")
        evaluation = cfg.evaluation.model_copy(update={"recent_rows": recent})
        cfg = cfg.model_copy(update={"evaluation": evaluation})
    uri = cfg.tracking.tracking_uri
    if uri and uri.startswith("sqlite:///"):  # resolved once: parameters.yaml freezes it
        tracking = cfg.tracking.model_copy(update={"tracking_uri": _resolve_path(uri, base)})
        cfg = cfg.model_copy(update={"tracking": tracking})
    return cfg.model_copy(update={"data": data})


def add_override_option(
    parser: Any,
    help: str = "override a parameter (repeatable)",  # noqa: A002 (argparse's name)
) -> None:
    """``-p/--param KEY=VALUE`` on an argparse parser, repeatable: what
    :func:`parse_overrides` reads. Every command taking parameters spells it this way."""
    parser.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["tuning.n_trials=5"]`` → ``{"tuning.n_trials": 5}`` (values parsed as YAML)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key.strip()):
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. tuning.n_trials=5")
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of ``raw`` with dotted-key overrides set (unknown keys fail validation later)."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"{source}: override {dotted}: {where} is not a mapping")
            node = child
        node[leaf] = value
    return out


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"parameter file not found: {path}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load, override and validate a parameter file."""
    path = Path(path)
    if not path.is_absolute():
        path = (project_dir() / path) if not path.exists() else path.resolve()
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: the parameter file is empty")
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of parameters")
        raw = apply_overrides(raw, overrides, str(path))
    return from_mapping(raw, source=str(path))


def dump(cfg: Config, path: Path) -> None:
    """Write the resolved parameters (absolute paths) so the run can be replayed."""
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
