"""Warming a kernel for stage code: what a stage notebook's setup cell will import.

The papermill engine (:class:`mlfolio.pipeline.engine.WarmKernel`) runs :func:`warm_up` as
the next stage's kernel start-up code, by name, while the current stage runs. It lives
with the stages because what it imports is what stage code needs; importing this module
loads :mod:`mlfolio.stages` (its package) and with it every stage function.
"""

from __future__ import annotations

from mlfolio.tracking import install_busy_timeout


def warm_up(tracking_uri: str) -> None:
    """Import the heavy modules and open the tracking store, ahead of a stage.

    A stage's setup cell then finds sklearn, pandas and MLflow already imported (~10 s
    here). It only fills caches: the notebook still imports and configures everything.
    """
    import matplotlib.pyplot  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import xgboost  # noqa: F401
    from mlflow.tracking import MlflowClient

    install_busy_timeout()  # a locked SQLite store: the runner's wait, not MLflow's 20 s
    MlflowClient(tracking_uri).search_experiments(max_results=1)
