"""The deploy stage's local target: the real `mlfolio serve`, checked against the pipeline."""

from __future__ import annotations

import os
import signal
import urllib.request

import pandas as pd
import pytest

from mlfolio.deploy.local import deploy_local, measure_serve_memory

from .servers import MODEL, register_models


def test_local_check_sends_the_serve_token(tmp_path, monkeypatch):
    """With $MLFOLIO_SERVE_TOKEN set, the server it starts requires the token: the check
    must send it (it failed with 401 before)."""
    registered = register_models(tmp_path)
    monkeypatch.setenv("MLFOLIO_SERVE_TOKEN", "deploy-check-token")
    rows = registered.X.head(20)
    expected = registered.models["champion"].predict_proba(rows)[:, 1]
    result = deploy_local(
        f"models:/{MODEL}@champion",
        registered.tracking_uri,
        rows,
        expected,
        # a run folder without logs/ yet (a stage run on a cold kernel): it failed with
        # FileNotFoundError, benchmarks/pipeline_bench.py's cold variant among others
        log_path=tmp_path / "run" / "logs" / "serve-local.log",
    )
    assert result["answers_match_pipeline"] and result["rows_checked"] == 20
    assert (tmp_path / "run" / "logs" / "serve-local.log").is_file()
    assert "deploy-check-token" not in result["serve_command"]  # never recorded


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_the_checked_server_is_stopped_and_recorded_as_checked_not_deployed(tmp_path):
    registered = register_models(tmp_path)
    rows = registered.X.head(5)
    expected = registered.models["champion"].predict_proba(rows)[:, 1]
    result = deploy_local(f"models:/{MODEL}@champion", registered.tracking_uri, rows, expected)
    assert result["status"] == "checked" and "pid" not in result
    assert not _answers(result["url"])  # nothing serves after the check


def test_keep_serving_leaves_the_checked_server_answering_at_its_url(tmp_path):
    registered = register_models(tmp_path)
    rows = registered.X.head(5)
    expected = registered.models["champion"].predict_proba(rows)[:, 1]
    result = deploy_local(
        f"models:/{MODEL}@champion",
        registered.tracking_uri,
        rows,
        expected,
        keep_serving=True,
        log_path=tmp_path / "serve.log",
    )
    try:
        assert result["status"] == "serving" and result["pid"] > 0
        assert _answers(result["url"]), (tmp_path / "serve.log").read_text()[-2000:]
        assert os.getpgid(result["pid"]) == result["pid"]  # its own session: survives us
    finally:
        os.kill(result["pid"], signal.SIGTERM)
        os.waitpid(result["pid"], 0)  # our child: reaped, not left a zombie


@pytest.mark.slow
def test_measure_serve_memory_reads_the_servers_peak_after_the_request(tmp_path):
    """deploy.sagemaker.serverless.memory_mb: auto sizes from this: the server process's
    own high-water mark, read after it scored the request, so a bigger request shows."""
    registered = register_models(tmp_path)
    uri = f"models:/{MODEL}@champion"
    small = measure_serve_memory(uri, registered.tracking_uri, registered.X.head(10))
    big_rows = pd.concat([registered.X] * 4, ignore_index=True)  # 2.8 MB of JSON
    big = measure_serve_memory(
        uri, registered.tracking_uri, big_rows, log_path=tmp_path / "logs" / "measure.log"
    )
    assert (small["rows_sent"], big["rows_sent"]) == (10, len(big_rows))
    assert big["request_bytes"] > 100 * small["request_bytes"]
    # Python with pandas, scikit-learn, MLflow and uvicorn loaded: well over 100 MB
    assert 100 < small["peak_rss_mb"] < 3000
    # scoring ~20k rows parsed from JSON into frames raised the peak by tens of MB
    assert big["peak_rss_mb"] > small["peak_rss_mb"] + 20, (small, big)
