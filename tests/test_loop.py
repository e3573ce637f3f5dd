"""The monitoring loop's own decisions (the whole loop runs in
tests/test_pipeline_monitor.py): which monitor stages a prediction log calls for."""

from __future__ import annotations

import time

import numpy as np

from mlfolio import config, predlog
from mlfolio.graph import MONITOR_STAGES
from mlfolio.pipeline import loop
from mlfolio.serve import Column

from .conftest import CHURN_CSV


def _log_one_row(folder, ts: float) -> None:
    with predlog.PredictionLog(folder, [Column("tenure", "long")]) as log:
        log.append(
            {"tenure": [3]},
            np.array([0.7]),
            request_id="r-1",
            model_name="churn-classifier",
            model_version="1",
            variant="champion",
            threshold=0.5,
            ts=ts,
        )
        assert log.flush(10)


def test_stages_reading_only_the_prediction_log_run_when_it_holds_rows(write_params, tmp_path):
    folder = tmp_path / "predictions"
    params = write_params(monitoring={"prediction_log": str(folder), "window_hours": 1})
    every = [s.name for s in MONITOR_STAGES]
    without_log = [s.name for s in MONITOR_STAGES if not s.needs_logged_rows]
    assert without_log and without_log != every
    assert loop.monitor_stages(config.load(params)) == without_log  # no log yet
    _log_one_row(folder, time.time() - 2 * 3600)  # outside the one-hour window
    assert loop.monitor_stages(config.load(params)) == without_log
    _log_one_row(folder, time.time())
    assert loop.monitor_stages(config.load(params)) == every
    # current rows from a file and no prediction log: nothing logged to compare
    current = write_params("current.yaml", monitoring={"current": str(CHURN_CSV)})
    assert loop.monitor_stages(config.load(current)) == without_log
