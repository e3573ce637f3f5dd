"""The engines behind one interface, and what one stage's execution records."""

from __future__ import annotations

import json
from pathlib import Path

from mlfolio.graph import MONITOR_STAGES
from mlfolio.pipeline.engine import execute_stage


def _notebook(path: Path, *sources: str) -> None:
    cells = [
        {"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
        for src in sources
    ]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path.write_text(
        json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5})
    )


def test_a_stage_whose_document_is_not_named_after_it_records_its_mlflow_run(tmp_path, monkeypatch):
    """ab_report writes ab.json (not ab_report.json): its entry names its MLflow run all
    the same (the run id is read from the document the stage declares, not a guessed name)."""
    project, run_dir = tmp_path / "project", tmp_path / "run"
    (project / "notebooks").mkdir(parents=True)
    run_dir.mkdir()
    monkeypatch.setenv("MLFOLIO_PROJECT_DIR", str(project))
    stage = next(s for s in MONITOR_STAGES if s.name == "ab_report")
    _notebook(
        project / "notebooks" / stage.notebook,
        "import json, pathlib\n"
        "doc = {'stage': 'ab_report', 'mlflow_run_id': 'r-ab-1', 'design': 'ab'}\n"
        "pathlib.Path('ab.json').write_text(json.dumps(doc))",
    )
    entry = execute_stage(stage, run_dir, {})
    assert entry.status == "succeeded", entry
    assert entry.mlflow_run_id == "r-ab-1"
