"""The deploy stage's local target: the real `mlfolio serve`, checked against the pipeline."""

from __future__ import annotations

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
