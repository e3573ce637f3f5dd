"""The deploy stage's local target: the real `mlfolio serve`, checked against the pipeline."""

from __future__ import annotations

import os
import signal
import urllib.request

from mlfolio.deploy.local import deploy_local

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
