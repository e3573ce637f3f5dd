"""The body of each stage notebook, as functions of a :class:`StageContext`.

Each reads its upstream products from the run folder (declared in :mod:`mlfolio.products`),
does its work through the pure modules (data, features, train, tune, evaluate), logs to
MLflow and writes its products. The notebooks call these and show what they return through
:mod:`mlfolio.views`. ``training``: ingest to evaluate; ``release``: register and deploy;
``monitoring``: the monitor and A/B report stages.
"""

from mlfolio.stages.monitoring import (
    CURRENT_DATA,
    DRIFT_REPORT,
    QUALITY_REPORT,
    RETRAIN_DATA,
    ab_report,
    monitor_model,
)
from mlfolio.stages.release import deploy_model, register_model
from mlfolio.stages.training import (
    SNAPSHOT,
    SPLITS,
    candidates,
    evaluate_candidate,
    ingest,
    load_splits,
    metrics_table,
    optuna_fixed,
    preprocess,
    test_scores,
    train_baselines,
    tune_model,
)

__all__ = [
    "CURRENT_DATA",
    "DRIFT_REPORT",
    "QUALITY_REPORT",
    "RETRAIN_DATA",
    "SNAPSHOT",
    "SPLITS",
    "ab_report",
    "candidates",
    "deploy_model",
    "evaluate_candidate",
    "ingest",
    "load_splits",
    "metrics_table",
    "monitor_model",
    "optuna_fixed",
    "preprocess",
    "register_model",
    "test_scores",
    "train_baselines",
    "tune_model",
]
