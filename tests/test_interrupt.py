"""Interrupted runs end honestly (issue 8, item 3).

Through the real ``mlfolio run`` command, one run folder on small parameters, whose tune
stage runs until a signal stops it (many trials, no timeout):

1. SIGINT to the runner's process group (Ctrl-C) while tune runs;
2. ``--from tune`` into the same folder, SIGTERM to the runner only;
3. ``--from tune`` again, ``kill -9`` of the runner;
4. ``--from tune -p tuning.enabled=false``: the resume that succeeds;
5. ``--stages train`` with other ``training.models``: refused, then ``--force``d.

The phases run once per module (each costs a runner start and a stage or more); each test
checks one guarantee on what a phase left. In-process tests cover signals that arrive while
a kernel starts or while a stage's HTML is rendered, and the handlers being restored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlfolio import pipeline
from mlfolio.errors import ConfigError, RunInterrupted
from mlfolio.pipeline import gate_status, report

from .conftest import CHURN_CSV, CHURN_PARAMS, SMALL, deep_update, tracking_section

pytestmark = pytest.mark.slow

EXE = Path(sys.executable).parent / "mlfolio"
# A tune stage that only ends when it is stopped.
ENDLESS = {"tuning": {"n_trials": 100_000, "timeout": None}, "deploy": {"targets": ["kubernetes"]}}
DEADLINE_S = 300  # a stage's start on two busy cores; the wait ends as soon as it happened


def write_module_params(folder: Path, **sections: Any) -> Path:
    """conftest's write_params, for a module-scoped fixture."""
    raw = deep_update(yaml.safe_load(CHURN_PARAMS.read_text()), SMALL)
    tracking = folder / "tracking"
    tracking.mkdir()
    raw = deep_update(raw, {"tracking": tracking_section(tracking)})
    raw = deep_update(raw, sections)
    raw["data"]["uri"] = str(CHURN_CSV)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def kernel_pids(marker: str) -> list[int]:
    """Live processes whose command line names ``marker`` (the kernels' runtime folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(proc.name))
    return pids


class Runner:
    """``mlfolio run`` subprocesses sharing one parameter file, tracking store, TMPDIR and
    Jupyter runtime folder (so leftovers are attributable to them)."""

    def __init__(self, base: Path):
        self.base = base
        self.params = write_module_params(base, **ENDLESS)
        self.uri = tracking_section(base / "tracking")["tracking_uri"]
        self.client = MlflowClient(tracking_uri=self.uri)
        self.runs_root = base / "runs"
        self.tmp = base / "t"  # short: kernels' IPC socket paths must stay under 107 bytes
        self.runtime = base / "rt"
        for folder in (self.runs_root, self.tmp, self.runtime):
            folder.mkdir()
        self.env = {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "MLFOLIO_PROJECT_DIR": str(Path(__file__).resolve().parents[1]),
            "MLFOLIO_USER": "pytest",
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.count = 0

    def start(self, *args: str) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        log = self.base / f"stderr-{self.count}.txt"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [str(EXE), "run", str(self.params), *args],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.base,
                start_new_session=True,
            )  # its own process group
        return proc, log

    def finish(self, *args: str, timeout: float = 600) -> tuple[int, str]:
        proc, log = self.start(*args)
        return proc.wait(timeout=timeout), log.read_text()

    def wait_for_stage_run(
        self, stage: str, proc: subprocess.Popen, log: Path, seen: set[str]
    ) -> str:
        """The id of a new RUNNING MLflow run of ``stage``, once its setup cell opened it."""
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            if proc.poll() is not None:
                pytest.fail(
                    f"the runner ended (exit {proc.returncode}) before {stage} "
                    f"started:\n{log.read_text()[-3000:]}"
                )
            exp = self.client.get_experiment_by_name("churn")
            if exp is not None:
                runs = self.client.search_runs(
                    [exp.experiment_id],
                    f"attributes.run_name = '{stage}' and attributes.status = 'RUNNING'",
                )
                new = [r.info.run_id for r in runs if r.info.run_id not in seen]
                if new:
                    return new[0]
            time.sleep(0.5)  # polling interval; the loop waits for the condition itself
        pytest.fail(f"{stage} did not start within {DEADLINE_S} s:\n{log.read_text()[-3000:]}")

    def wait_for_trials(self, proc: subprocess.Popen, log: Path) -> None:
        """Until the study appends to its journal: the tune cell itself is running."""
        journal = next(self.runs_root.iterdir()) / "tune" / "study.journal"
        size = journal.stat().st_size if journal.exists() else 0
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            if proc.poll() is not None:
                pytest.fail(
                    f"the runner ended (exit {proc.returncode}) before the study "
                    f"started:\n{log.read_text()[-3000:]}"
                )
            if journal.exists() and journal.stat().st_size > size:
                return
            time.sleep(0.2)
        pytest.fail(f"the study did not start within {DEADLINE_S} s")

    def wait_for_no_kernels(self, timeout: float = 60) -> list[int]:
        end = time.monotonic() + timeout
        while (pids := kernel_pids(str(self.runtime))) and time.monotonic() < end:
            time.sleep(0.2)
        return pids

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def snapshot(self, rc: int, log: Path, folder: Path) -> dict[str, Any]:
        """What an ended runner left behind."""
        manifest = json.loads((folder / "manifest.json").read_text())
        index = folder / "index.html"
        return {
            "rc": rc,
            "stderr": log.read_text(),
            "manifest": manifest,
            "index": index.read_text() if index.exists() else None,
            "kernel_dirs": sorted(p.name for p in self.tmp.glob("mlfolio-k*")),
            "connection_files": sorted(p.name for p in self.runtime.glob("kernel-*")),
            "kernels": kernel_pids(str(self.runtime)),
        }


def interrupt(
    runner: Runner, folder_args: list[str], seen: set[str], send: Any
) -> tuple[dict[str, Any], str]:
    """Start a run, wait for its tune stage's MLflow run, signal it, wait for the end."""
    proc, log = runner.start(*folder_args)
    try:
        tune_run = runner.wait_for_stage_run("tune", proc, log, seen)
        runner.wait_for_trials(proc, log)
        send(proc.pid)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (folder,) = runner.runs_root.iterdir()
    snap = runner.snapshot(rc, log, folder)
    # MLflow as this phase left it (later phases end the shared pipeline run again)
    snap["mlflow"] = {
        "parent": runner.status(snap["manifest"]["mlflow"]["parent_run_id"]),
        "tune": runner.status(tune_run),
    }
    return snap, tune_run


@pytest.fixture(scope="module")
def phases(tmp_path_factory) -> dict[str, Any]:
    runner = Runner(tmp_path_factory.mktemp("irq"))
    out: dict[str, Any] = {"runner": runner}
    seen: set[str] = set()

    # 1. Ctrl-C: SIGINT to the whole process group, mid-tune
    snap, tune_run = interrupt(
        runner,
        ["--runs-root", str(runner.runs_root)],
        seen,
        lambda pid: os.killpg(pid, signal.SIGINT),
    )
    seen.add(tune_run)
    folder = Path(snap["manifest"]["run_dir"])
    out.update(folder=folder, sigint=snap, sigint_tune_run=tune_run)
    resume = ["--from", "tune", "--run-dir", str(folder)]

    # 2. a scheduler's SIGTERM to the runner process only, mid-tune of a resumed run
    snap, tune_run = interrupt(runner, resume, seen, lambda pid: os.kill(pid, signal.SIGTERM))
    seen.add(tune_run)
    out.update(sigterm=snap, sigterm_tune_run=tune_run)

    # 3. kill -9 of the runner mid-tune: nothing of it can react
    proc, log = runner.start(*resume)
    tune_run = runner.wait_for_stage_run("tune", proc, log, seen)
    runner.wait_for_trials(proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    seen.add(tune_run)
    # its kernels notice their parent is gone (ipykernel's parent poller) and exit
    out.update(
        kill9_tune_run=tune_run,
        kill9_kernels_left=runner.wait_for_no_kernels(),
        kill9_status=runner.status(tune_run),
        kill9_manifest=json.loads((folder / "manifest.json").read_text()),
    )

    # 4. the resume that succeeds (tuning off: the stage itself is not under test here)
    rc, stderr = runner.finish(*resume, "-p", "tuning.enabled=false")
    out.update(
        resumed={
            "rc": rc,
            "stderr": stderr,
            "manifest": json.loads((folder / "manifest.json").read_text()),
        }
    )

    # 5. train again with other models: refused, then forced
    before = (folder / "manifest.json").read_bytes(), (folder / "train.json").read_bytes()
    train_again = [
        "--stages",
        "train",
        "--run-dir",
        str(folder),
        "-p",
        "tuning.enabled=false",
        "-p",
        "training.models=[logreg]",
    ]
    rc, stderr = runner.finish(*train_again)
    after = (folder / "manifest.json").read_bytes(), (folder / "train.json").read_bytes()
    out.update(refused={"rc": rc, "stderr": stderr, "unchanged": before == after})
    rc, stderr = runner.finish(*train_again, "--force")
    out.update(
        forced={
            "rc": rc,
            "stderr": stderr,
            "manifest": json.loads((folder / "manifest.json").read_text()),
            "index": (folder / "index.html").read_text(),
        }
    )
    return out


def assert_interrupted(snap: dict[str, Any], signame: str, code: int) -> None:
    m = snap["manifest"]
    assert snap["rc"] == code, snap["stderr"][-3000:]
    assert f"interrupted by {signame}" in snap["stderr"]
    assert m["status"] == "interrupted", m.get("status")
    assert m["interrupted"]["signal"] == signame and m["interrupted"]["stage"] == "tune"
    verdict = gate_status.decide(m, m["run_dir"])
    assert verdict.exit_code == 3 and f"by {signame} during stage tune" in verdict.reason
    tune = m["stages"]["tune"]
    assert tune["status"] == "interrupted"
    # the cell that was running when the kernel stopped: the study's
    nb = json.loads((Path(m["run_dir"]) / tune["notebook"]).read_text())
    assert "tune_model" in "".join(nb["cells"][tune["interrupted"]["cell_index"]]["source"])
    assert [m["stages"][s]["status"] for s in ("evaluate", "register", "deploy")] == ["not run"] * 3
    assert snap["index"] is not None and 'id="run-status">interrupted' in snap["index"]
    assert f"interrupted by {signame}" in snap["index"]
    assert snap["kernel_dirs"] == [], "kernel socket folders left in TMPDIR"
    assert snap["connection_files"] == [], "kernel connection files left"
    assert snap["kernels"] == [], "kernel processes still running"


def test_ctrl_c_ends_the_run_interrupted(phases):
    snap = phases["sigint"]
    assert_interrupted(snap, "SIGINT", 130)
    m = snap["manifest"]
    assert [m["stages"][s]["status"] for s in ("ingest", "preprocess", "train")] == [
        "succeeded"
    ] * 3
    # MLflow: the pipeline run and the stage's run were ended KILLED, not left RUNNING
    assert snap["mlflow"] == {"parent": "KILLED", "tune": "KILLED"}
    assert phases["runner"].status(m["stages"]["train"]["mlflow_run_id"]) == "FINISHED"


def test_sigterm_to_the_runner_ends_the_run_interrupted(phases):
    snap = phases["sigterm"]
    assert_interrupted(snap, "SIGTERM", 143)
    assert snap["mlflow"] == {"parent": "KILLED", "tune": "KILLED"}
    # stages before --from keep their record
    assert snap["manifest"]["stages"]["train"]["status"] == "succeeded"


def test_resume_after_kill_9_ends_the_killed_runs(phases):
    runner = phases["runner"]
    assert phases["kill9_kernels_left"] == []
    # what kill -9 leaves: a RUNNING stage run and a manifest still saying running
    assert phases["kill9_status"] == "RUNNING"
    assert phases["kill9_manifest"]["status"] == "running"
    resumed = phases["resumed"]
    assert resumed["rc"] == 0, resumed["stderr"][-3000:]
    m = resumed["manifest"]
    # no run of the folder is left RUNNING: the killed stage's run was ended KILLED
    assert runner.status(phases["kill9_tune_run"]) == "KILLED"
    exp = runner.client.get_experiment_by_name("churn").experiment_id
    running = runner.client.search_runs([exp], "attributes.status = 'RUNNING'")
    assert [(r.info.run_name, r.info.run_id) for r in running] == []
    assert runner.status(m["mlflow"]["parent_run_id"]) == "FINISHED"
    assert m["status"] == "succeeded" and m["interrupted"] is None
    assert all(s["status"] == "succeeded" for s in m["stages"].values()), m["stages"]


def test_other_parameters_are_refused_then_forced_and_mark_stale(phases):
    refused = phases["refused"]
    assert refused["rc"] == 2, refused["stderr"][-3000:]
    assert "training.models" in refused["stderr"] and "--force" in refused["stderr"]
    assert "tuning" not in refused["stderr"]  # the same as recorded
    assert refused["unchanged"], "the refused run changed the manifest or train.json"

    forced = phases["forced"]
    assert forced["rc"] == 0, forced["stderr"][-3000:]
    m = forced["manifest"]
    stages = m["stages"]
    # each stage records the parameters it ran with
    assert stages["train"]["parameters"]["training"]["models"] == ["logreg"]
    assert stages["train"]["overrides"]["training.models"] == ["logreg"]
    assert "training" not in stages["tune"]["parameters"]
    assert stages["tune"]["overrides"] == {"tuning.enabled": False}
    assert m["parameters"]["training"]["models"] == ["logreg"]
    assert m["history"][-1]["force"] is True
    assert m["history"][-1]["changed"] == ["training.models"]
    # evaluate read the old train.json; register and deploy follow it: stale. Tune reads
    # only preprocess's splits (its declared reads), which did not change: not stale.
    stale = {name for name, s in stages.items() if s.get("stale")}
    assert stale == {"evaluate", "register", "deploy"}, stale
    assert any("train.json" in reason for reason in stages["evaluate"]["stale"])
    verdict = gate_status.decide(m, m["run_dir"])  # CI must not deploy a stale verdict
    assert verdict.exit_code == 1 and "stage evaluate is stale" in verdict.reason
    assert any("follows stale stage(s): evaluate" in r for r in stages["register"]["stale"])
    for name in ("evaluate", "register", "deploy"):
        assert f'id="stale-{name}"' in forced["index"], name
    assert 'id="stale-train"' not in forced["index"]
    assert 'id="stale-tune"' not in forced["index"]


# -- in-process: the signal lands while a kernel starts, or while HTML is rendered -----------
def _run_catching(**kwargs: Any) -> BaseException | None:
    try:
        pipeline.run(echo=lambda line: None, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - before the fix a KeyboardInterrupt escapes
        return exc
    return None


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Kernel socket folders of this test land in a folder of its own."""
    import tempfile

    folder = tmp_path / "t"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_sigterm_while_a_kernel_starts(
    write_params, runs_root, tracking_dir, private_tmp, monkeypatch
):
    """Cold kernels (one started per stage): the signal arrives during the first start."""
    real_init = pipeline.WarmKernel.__init__

    def init_then_signal(self, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # handled before __init__ returns to the runner

    monkeypatch.setattr(pipeline.WarmKernel, "__init__", init_then_signal)

    def old_handler(signum: int, frame: Any) -> None:
        pytest.fail("SIGTERM reached the handler installed before the run")

    previous = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, old_handler)
    try:
        exc = _run_catching(
            params_file=write_params(),
            stages=["ingest", "preprocess"],
            runs_root=runs_root,
            warm_kernels=False,
        )
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous[1])
    assert isinstance(exc, RunInterrupted), repr(exc)
    assert exc.exit_code == 143
    assert signal.getsignal(signal.SIGINT) is previous[0]
    assert after is old_handler  # restored when run() returned
    (run_dir,) = runs_root.iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["interrupted"]["stage"] is None
    assert [m["stages"][s]["status"] for s in ("ingest", "preprocess")] == ["not run"] * 2
    assert not (run_dir / "01_ingest.ipynb").exists()
    assert (run_dir / "index.html").exists()
    assert list(private_tmp.glob("mlfolio-k*")) == []
    client = MlflowClient(tracking_uri=tracking_section(tracking_dir)["tracking_uri"])
    assert client.get_run(m["mlflow"]["parent_run_id"]).info.status == "KILLED"


def test_sigint_while_html_is_rendered(
    write_params, runs_root, tracking_dir, private_tmp, monkeypatch
):
    """The stage's cells all ran: it stays succeeded; the next stage does not start."""
    real_render = report.notebook_to_html

    def signal_then_render(notebook: Path, target: Path) -> Path:
        os.kill(os.getpid(), signal.SIGINT)
        return real_render(notebook, target)

    monkeypatch.setattr(report, "notebook_to_html", signal_then_render)
    previous = signal.getsignal(signal.SIGINT)
    exc = _run_catching(
        params_file=write_params(), stages=["ingest", "preprocess"], runs_root=runs_root
    )
    assert isinstance(exc, RunInterrupted), repr(exc)
    assert (exc.exit_code, "--from preprocess" in str(exc)) == (130, True), str(exc)
    assert signal.getsignal(signal.SIGINT) is previous
    (run_dir,) = runs_root.iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "interrupted"
    assert m["stages"]["ingest"]["status"] == "succeeded"
    assert (run_dir / "01_ingest.html").exists()
    assert m["stages"]["preprocess"]["status"] == "not run"
    assert "--from preprocess" in (run_dir / "index.html").read_text()
    assert list(private_tmp.glob("mlfolio-k*")) == []
    client = MlflowClient(tracking_uri=tracking_section(tracking_dir)["tracking_uri"])
    assert client.get_run(m["mlflow"]["parent_run_id"]).info.status == "KILLED"
    assert client.get_run(m["stages"]["ingest"]["mlflow_run_id"]).info.status == "FINISHED"


def test_a_second_signal_stops_at_once(write_params, runs_root, private_tmp, monkeypatch):
    """The second Ctrl-C does not wait for the stage to be wrapped up."""
    real_render = report.notebook_to_html

    def two_signals_then_render(notebook: Path, target: Path) -> Path:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real_render(notebook, target)  # not reached: the second one raises

    monkeypatch.setattr(report, "notebook_to_html", two_signals_then_render)
    previous = signal.getsignal(signal.SIGINT)
    exc = _run_catching(
        params_file=write_params(), stages=["ingest", "preprocess"], runs_root=runs_root
    )
    assert isinstance(exc, RunInterrupted), repr(exc)
    assert exc.exit_code == 130 and "second signal" in str(exc)
    assert signal.getsignal(signal.SIGINT) is previous
    (run_dir,) = runs_root.iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["interrupted"]["forced"] is True
    assert m["stages"]["ingest"]["status"] == "interrupted"
    assert not (run_dir / "01_ingest.html").exists()
    assert 'id="run-status">interrupted' in (run_dir / "index.html").read_text()
    assert list(private_tmp.glob("mlfolio-k*")) == []


def test_no_handlers_outside_the_main_thread(write_params, runs_root, private_tmp):
    """A library user's worker thread: run() works and leaves signal handling alone."""
    previous = signal.getsignal(signal.SIGINT)
    result: list[BaseException | None] = []
    worker = threading.Thread(
        target=lambda: result.append(
            _run_catching(params_file=write_params(), stages=["ingest"], runs_root=runs_root)
        )
    )
    worker.start()
    worker.join(timeout=300)
    assert result == [None]
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_run_folder_in_use_is_refused(write_params, tmp_path):
    """Two runners on one folder: the second is refused (so a resume may safely end the
    MLflow runs the folder's manifest left RUNNING)."""
    import fcntl

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"experiment": "churn", "stages": {}}))
    with (folder / ".mlfolio.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another mlfolio run"):
            pipeline.run(write_params(), stages=["train"], run_dir=folder, echo=lambda line: None)


def test_the_end_of_a_run_releases_restores_then_cleans_up_whatever_fails():
    """Both engines end a run through Signals.end: what is tracked is shut down, the
    handlers restored and every clean-up called, even when one step before it raised."""
    from mlfolio.pipeline.signals import Signals

    done: list[str] = []

    class Kernel:
        def kill(self) -> None:
            done.append("kill")

        def shutdown(self) -> None:
            done.append("shutdown")
            raise OSError("socket folder gone")

    previous = signal.getsignal(signal.SIGTERM)
    sigs = Signals()
    sigs.install()
    assert signal.getsignal(signal.SIGTERM) == sigs._handle
    sigs.track(Kernel())

    def unlock() -> None:
        done.append("unlock")
        raise RuntimeError("lock file gone")

    with pytest.raises(RuntimeError, match="lock file gone") as raised:
        sigs.end(lambda: done.append("unroute"), unlock, lambda: done.append("rmtree"))
    assert done == ["shutdown", "unroute", "unlock", "rmtree"]
    assert isinstance(raised.value.__context__, OSError)  # the first error is kept too
    assert signal.getsignal(signal.SIGTERM) is previous
