"""The engines behind one interface, and what one stage's execution records."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mlfolio import cli, pipeline
from mlfolio.errors import ConfigError, StageError
from mlfolio.graph import MONITOR_STAGES, STAGES, Stage
from mlfolio.pipeline import engines
from mlfolio.pipeline.engine import execute_stage
from mlfolio.pipeline.engines import RunRequest
from mlfolio.pipeline.manifest import StageEntry


def _notebook(path: Path, *sources: str) -> None:
    cells = [
        {"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
        for src in sources
    ]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path.write_text(
        json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5})
    )


def _ab_report(tmp_path: Path, monkeypatch, *sources: str) -> tuple[Stage, Path]:
    """The ab_report stage of a project in ``tmp_path`` whose notebook runs ``sources``,
    and a run folder for it."""
    project, run_dir = tmp_path / "project", tmp_path / "run"
    (project / "notebooks").mkdir(parents=True)
    run_dir.mkdir()
    monkeypatch.setenv("MLFOLIO_PROJECT_DIR", str(project))
    stage = next(s for s in MONITOR_STAGES if s.name == "ab_report")
    _notebook(project / "notebooks" / stage.notebook, *sources)
    return stage, run_dir


def test_a_stage_whose_document_is_not_named_after_it_records_its_mlflow_run(tmp_path, monkeypatch):
    """ab_report writes ab.json (not ab_report.json): its entry names its MLflow run all
    the same (the run id is read from the document the stage declares, not a guessed name)."""
    stage, run_dir = _ab_report(
        tmp_path,
        monkeypatch,
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
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
    stage, run_dir = _ab_report(
        tmp_path,
        monkeypatch,
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


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_a_stage_kernel_lets_openmp_threads_sleep_unless_the_user_said(
    tmp_path, monkeypatch, user_value
):
    """OMP_WAIT_POLICY=PASSIVE in a stage kernel (a threaded XGBoost fit beside another
    busy process, spinning threads took 1.47x one thread's time); a user's value is kept."""
    if user_value is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", user_value)
    stage, run_dir = _ab_report(
        tmp_path,
        monkeypatch,
        "import json, os, pathlib\n"
        "doc = {'stage': 'ab_report', 'omp': os.environ.get('OMP_WAIT_POLICY')}\n"
        "pathlib.Path('ab.json').write_text(json.dumps(doc))",
    )
    entry = execute_stage(stage, run_dir, {})
    assert entry.status == "succeeded", entry
    assert json.loads((run_dir / "ab.json").read_text())["omp"] == (user_value or "PASSIVE")


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


# -- the runner drives a stage-by-stage engine: retries and timeouts ----------------------
class _Scripted(engines.Papermill):
    """A stage-by-stage engine whose attempts end as a script says (no kernel): each
    writes its notebook, then fails in cell 2 or succeeds."""

    name = "scripted"
    summary = "attempts as scripted"

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.calls: list[tuple[str, float | None, int]] = []

    def stage_engine(self, folder, tracking_uri, sigs, warm, to_execute):
        outer = self

        class Attempts:
            def execute(self, stage, parameters, timeout_s, later):
                outer.calls.append((stage.name, timeout_s, later))
                entry = StageEntry.executing(stage.notebook)
                (folder / stage.notebook).write_text(f"attempt {len(outer.calls)}")
                if outer.script[stage.name].pop(0) == "ok":
                    entry.succeed()
                else:
                    entry.fail("ValueError", "the source flaked\nsecond line", 2)
                entry.duration_s = 0.5
                return entry

        return Attempts()


def test_the_papermill_engine_hands_its_stage_engine_to_the_runner(monkeypatch):
    from mlfolio import pipeline

    seen: dict = {}
    monkeypatch.setattr(pipeline, "run", lambda *args, **kwargs: seen.update(kwargs))
    papermill = engines.get("papermill")
    engines.run("papermill", RunRequest("p.yaml"))
    assert seen["stage_engine"] == papermill.stage_engine
    assert isinstance(papermill, engines.StageByStage)
    assert not isinstance(engines.get("kfp-local"), engines.StageByStage)  # a whole-run one


def test_a_failed_attempt_is_kept_and_retried_up_to_the_stages_setting(write_params, runs_root):
    lines: list[str] = []
    scripted = _Scripted({"ingest": ["fail", "fail", "ok"]})
    params = write_params(stages={"ingest": {"retries": 2, "timeout_s": 30}})
    manifest = pipeline.run(
        params,
        stages=["ingest"],
        runs_root=runs_root,
        echo=lines.append,
        stage_engine=scripted.stage_engine,
    )
    assert scripted.calls == [("ingest", 30, 0)] * 3  # each attempt within its bound
    folder = Path(manifest.run_dir)
    entry = manifest.data["stages"]["ingest"]
    assert entry["status"] == "succeeded" and manifest.status == "succeeded"
    assert [a["attempt"] for a in entry["attempts"]] == [1, 2]
    assert [a["notebook"] for a in entry["attempts"]] == [
        "01_ingest.attempt1.ipynb",
        "01_ingest.attempt2.ipynb",
    ]
    assert entry["attempts"][0]["error"]["evalue"].startswith("the source flaked")
    assert (folder / "01_ingest.attempt1.ipynb").read_text() == "attempt 1"
    assert (folder / "01_ingest.attempt2.ipynb").read_text() == "attempt 2"
    assert (folder / "01_ingest.ipynb").read_text() == "attempt 3"
    assert any(
        "attempt 1 FAILED after 0.5s: ValueError: the source flaked; retrying "
        "(1 of stages.ingest.retries = 2)" in line
        for line in lines
    ), lines
    assert any("ok in 0.5s (attempt 3)" in line for line in lines), lines
    index = (folder / "index.html").read_text()  # the reviewer finds the failed attempts
    assert 'id="attempts-ingest">after 2 failed attempts: ' in index
    assert '<a href="01_ingest.attempt1.ipynb">attempt 1</a> (ValueError)' in index


def test_a_stage_failing_every_attempt_fails_the_run_naming_them(write_params, runs_root):
    scripted = _Scripted({"ingest": ["fail", "fail", "ok"]})
    params = write_params(stages={"ingest": {"retries": 1}})
    with pytest.raises(StageError) as failed:
        pipeline.run(
            params,
            stages=["ingest"],
            runs_root=runs_root,
            echo=lambda line: None,
            stage_engine=scripted.stage_engine,
        )
    assert str(failed.value).endswith("ValueError: the source flaked (after 2 attempts)")
    assert scripted.calls == [("ingest", None, 0)] * 2 and scripted.script["ingest"] == ["ok"]
    (folder,) = runs_root.iterdir()
    m = json.loads((folder / "manifest.json").read_text())
    assert (m["status"], m["failed_stage"], m["failed_cell"]) == ("failed", "ingest", 2)
    assert [a["attempt"] for a in m["stages"]["ingest"]["attempts"]] == [1]


# -- real kernels: a stage stuck past its time limit, a stage that fails once ----------------
def _project(tmp_path: Path, monkeypatch, stage_name: str, *sources: str) -> Stage:
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    monkeypatch.setenv("MLFOLIO_PROJECT_DIR", str(project))
    stage = next(s for s in STAGES if s.name == stage_name)
    _notebook(project / "notebooks" / stage.notebook, *sources)
    return stage


def test_an_attempt_stuck_past_its_time_limit_is_stopped_and_says_so(tmp_path, monkeypatch):
    """papermill bounds each cell; a stage stuck in one (or looping over many) is stopped
    as a whole: its kernel killed at ``timeout_s``, the partial notebook kept."""
    stage = _project(tmp_path, monkeypatch, "tune", "x = 1", "import time\ntime.sleep(600)")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t0 = time.monotonic()
    entry = execute_stage(stage, run_dir, {}, timeout_s=4)
    assert time.monotonic() - t0 < 60
    assert entry.status == "failed" and entry.error["ename"] == "StageTimeout"
    assert entry.error["cell_index"] == 1 and entry.error["timeout_s"] == 4
    assert (
        "ran past stages.tune.timeout_s = 4 s and was stopped in cell 1" in (entry.error["evalue"])
    )
    assert (run_dir / stage.notebook).exists() and (run_dir / entry.html).exists()
    # a quick stage under the same bound is not touched
    _notebook(Path(os.environ["MLFOLIO_PROJECT_DIR"]) / "notebooks" / stage.notebook, "x = 1")
    assert execute_stage(stage, run_dir, {}, timeout_s=30).status == "succeeded"


FLAKY = (
    "import pathlib\n"
    "marker = pathlib.Path('first-attempt-ran')  # in the run folder\n"
    "if not marker.exists():\n"
    "    marker.write_text('x')\n"
    "    raise RuntimeError('the first attempt fails')\n"
    "print('ran ' + 'to the end')"
)


def test_a_stage_that_fails_once_succeeds_on_its_retry(write_params, runs_root, monkeypatch):
    """A real fault on real kernels: the first attempt raises (it leaves a marker), the
    retry succeeds; the first one's notebook and page are kept under attempt names."""
    stage = _project(runs_root.parent, monkeypatch, "ingest", FLAKY)
    params = write_params(stages={"ingest": {"retries": 1}})
    lines: list[str] = []
    manifest = pipeline.run(params, stages=["ingest"], runs_root=runs_root, echo=lines.append)
    folder = Path(manifest.run_dir)
    entry = manifest.data["stages"]["ingest"]
    assert entry["status"] == "succeeded", entry
    (first,) = entry["attempts"]
    assert first["error"]["ename"] == "RuntimeError" and first["error"]["cell_index"] == 1
    assert (first["notebook"], first["html"]) == (
        "01_ingest.attempt1.ipynb",
        "01_ingest.attempt1.html",
    )
    kept = (folder / first["notebook"]).read_text()
    assert "the first attempt fails" in kept and "ran to the end" not in kept
    assert (folder / first["html"]).exists()
    assert "ran to the end" in (folder / stage.notebook).read_text()
    assert any("retrying (1 of stages.ingest.retries = 1)" in line for line in lines)
    index = (folder / "index.html").read_text()
    assert '<a href="01_ingest.attempt1.html">attempt 1</a> (RuntimeError)' in index


def test_a_stuck_stage_fails_the_run_naming_its_time_limit(write_params, runs_root, monkeypatch):
    _project(runs_root.parent, monkeypatch, "ingest", "import time\ntime.sleep(600)")
    params = write_params(stages={"ingest": {"timeout_s": 3}})
    with pytest.raises(StageError) as failed:
        pipeline.run(params, stages=["ingest"], runs_root=runs_root, echo=lambda line: None)
    assert "StageTimeout: the attempt ran past stages.ingest.timeout_s = 3 s" in str(failed.value)
    (folder,) = runs_root.iterdir()
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "failed" and m["stages"]["ingest"]["error"]["timeout_s"] == 3
