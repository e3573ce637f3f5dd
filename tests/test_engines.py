"""The engines behind one interface, and what one stage's execution records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlfolio import cli
from mlfolio.errors import ConfigError
from mlfolio.graph import MONITOR_STAGES
from mlfolio.pipeline import engines
from mlfolio.pipeline.engine import execute_stage
from mlfolio.pipeline.engines import RunRequest


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


def test_a_stage_records_the_cpu_time_its_kernel_and_children_used(tmp_path, monkeypatch):
    """cpu_s: the kernel's CPU time from the stage's start to its last cell, with a child
    process's (reaped by the kernel) counted; the kernel's start-up is not the stage's."""
    project, run_dir = tmp_path / "project", tmp_path / "run"
    (project / "notebooks").mkdir(parents=True)
    run_dir.mkdir()
    monkeypatch.setenv("MLFOLIO_PROJECT_DIR", str(project))
    stage = next(s for s in MONITOR_STAGES if s.name == "ab_report")
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
    _notebook(
        project / "notebooks" / stage.notebook,
        "import subprocess, sys",
        f"subprocess.run([sys.executable, '-c', {burn!r}], check=True)",
        burn,
    )
    entry = execute_stage(stage, run_dir, {})
    assert entry.status == "succeeded", entry
    cpu = entry.model_dump()["cpu_s"]
    # two seconds burnt (one in the kernel, one in its child), plus the cells' own work;
    # less than the interpreter start-up the kernel did before the stage began
    assert 2.0 <= cpu < 2.0 + entry.duration_s, entry


def test_tree_cpu_time_counts_a_fork_servers_finished_worker(tmp_path):
    """Tuning workers run in a multiprocessing fork server's children: a worker that ended
    was reaped by the server (alive under the kernel), so its CPU time still counts."""
    import subprocess
    import sys

    from mlfolio.pipeline.engine import tree_cpu_s

    script = tmp_path / "fork_server_worker.py"
    script.write_text(
        "import multiprocessing as mp, sys, time\n"
        "def burn():\n"
        "    t = time.process_time()\n"
        "    while time.process_time() - t < 1.0: pass\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('forkserver').Process(target=burn); p.start(); p.join()\n"
        "    print('done', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "done\n"
        assert tree_cpu_s(proc.pid) >= 1.0
    finally:
        proc.communicate("")


def test_tree_cpu_time_of_no_process_is_unknown():
    from mlfolio.pipeline.engine import tree_cpu_s

    assert tree_cpu_s(None) is None and tree_cpu_s(2**22 + 12345) is None


# -- the engine registry -----------------------------------------------------------------
class _Recording:
    """A minimal engine: records what the runner's driver asked of it."""

    name = "recording"
    summary = "records its requests"

    def __init__(self, refuse: str | None = None):
        self.calls: list[tuple[str, RunRequest]] = []
        self.refuse = refuse

    def check(self, request: RunRequest) -> None:
        self.calls.append(("check", request))
        if self.refuse:
            raise ConfigError(self.refuse)

    def run(self, request: RunRequest) -> str:
        self.calls.append(("run", request))
        return "done"


def test_the_registry_holds_the_engines_and_each_satisfies_the_protocol():
    assert list(engines.ENGINES) == ["papermill", "kfp-local", "kfp"]
    for name, engine in engines.ENGINES.items():
        assert isinstance(engine, engines.Engine) and engines.get(name) is engine
    assert engines.get(engines.DEFAULT).name == "papermill"
    with pytest.raises(TypeError, match="not an Engine"):
        engines.register(object())  # type: ignore[arg-type]


def test_an_unknown_engine_names_the_option_and_the_choices():
    with pytest.raises(ConfigError) as exc:
        engines.get("sagemaker")
    assert str(exc.value) == (
        "unknown engine 'sagemaker': --engine takes one of papermill, kfp-local, kfp"
    )


def test_the_cli_drives_a_registered_engine_checks_first(monkeypatch, tmp_path, capsys):
    engine = _Recording()
    monkeypatch.setitem(engines.ENGINES, engine.name, engine)
    argv = ["run", str(tmp_path / "p.yaml"), "--engine", "recording", "-p", "seed=3"]
    assert cli.main(argv) == 0
    assert [what for what, _ in engine.calls] == ["check", "run"]
    request = engine.calls[1][1]
    assert request.overrides == {"seed": 3} and request.params_file == str(tmp_path / "p.yaml")

    refusing = _Recording(refuse="no GPUs here")
    monkeypatch.setitem(engines.ENGINES, refusing.name, refusing)
    assert cli.main(argv) == 2
    assert "mlfolio: no GPUs here" in capsys.readouterr().err
    assert [what for what, _ in refusing.calls] == ["check"]  # never run


def test_the_help_lists_every_registered_engine(monkeypatch):
    monkeypatch.setitem(engines.ENGINES, "recording", _Recording())
    sub = next(a for a in cli._parser()._actions if a.dest == "command")
    help_text = " ".join(sub.choices["run"].format_help().split())
    assert "{papermill,kfp-local,kfp,recording}" in help_text
    assert "recording: records its requests" in help_text
    assert "papermill (default): the stages in this process's kernels" in help_text


def test_each_engine_refuses_what_it_cannot_do():
    papermill, local, kfp = (engines.get(n) for n in ("papermill", "kfp-local", "kfp"))
    with pytest.raises(ConfigError, match="--kfp-host URL goes with --engine kfp"):
        papermill.check(RunRequest("p.yaml", kfp_host="http://kfp"))
    with pytest.raises(ConfigError, match="--engine kfp-local runs the whole chain"):
        local.check(RunRequest("p.yaml", from_stage="train", run_dir="x"))
    with pytest.raises(ConfigError, match="--kfp-host URL goes with --engine kfp"):
        kfp.check(RunRequest("p.yaml"))
    with pytest.raises(ConfigError, match="give its --run-dir too"):
        engines.run("papermill", RunRequest("p.yaml", stages=["train"]))
