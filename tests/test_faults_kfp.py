"""Issue 21, fault row "kfp-local + SIGINT/SIGTERM": ``mlfolio run --engine kfp-local``
honours Ctrl-C and SIGTERM as the default engine does.

Two real runners at once (each its own SQLite tracking store, PostgreSQL study database,
TMPDIR and process group), on a tune stage fanned out to two workers that only end when
stopped; each is signalled once both its ``tune_worker`` tasks run: Ctrl-C (SIGINT to
the process group) and a scheduler's SIGTERM to the runner only. Before the fix, SIGINT
ended with no manifest and the parent run RUNNING (a SIGINT to the runner alone was
ignored); SIGTERM killed the runner at once, orphaning both workers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlfolio.graph import STAGE_NAMES
from mlfolio.pipeline import gate_status

from . import team
from .conftest import CHURN_CSV, CHURN_PARAMS, SMALL, deep_update, require_module, tracking_section

require_module("kfp", "the kfp extra (mlfolio[kfp]) runs the pipeline")

EXE = Path(sys.executable).parent / "mlfolio"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
DEADLINE_S = 240  # to the tune workers on two busy cores; the wait ends when they run
EXIT_S = 60  # from the signal to the runner's exit
SETTLE_S = 5  # for stopped processes to be gone (a kernel's parent poller: 1 s)


def _proc(pid: str) -> tuple[str, int, str] | None:
    """(state, process group, command line) of a process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
    return state, int(pgrp), cmdline


def processes(match: Callable[[int, str], bool]) -> dict[int, str]:
    """Live (not zombie) processes for which ``match(process group, cmdline)`` holds."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _proc(entry.name)) is not None:
            state, pgrp, cmdline = info
            if state != "Z" and match(pgrp, cmdline):
                found[int(entry.name)] = cmdline[:200]
    return found


class Runner:
    """One ``mlfolio run --engine kfp-local`` in its own folder and process group."""

    def __init__(self, base: Path, database: str):
        self.base = base
        self.tmp = base / "t"  # short: kernels' IPC socket paths stay under 107 bytes
        self.runs_root = base / "runs"
        for folder in (self.tmp, self.runs_root, base / "tracking"):
            folder.mkdir(parents=True)
        raw = deep_update(yaml.safe_load(CHURN_PARAMS.read_text()), SMALL)
        raw = deep_update(
            raw,
            {
                "tracking": tracking_section(base / "tracking"),
                "data": {"uri": str(CHURN_CSV), "sample_rows": 800},
                "training": {"models": ["logreg"]},
                # two workers on a shared study that only ends when they are stopped
                "tuning": {
                    "n_workers": 2,
                    "n_trials": 100_000,
                    "timeout": None,
                    "storage": f"{PG}/{database}",
                },
                "deploy": {"targets": ["kubernetes"]},
            },
        )
        self.params = base / "params.yaml"
        self.params.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.client = MlflowClient(tracking_section(base / "tracking")["tracking_uri"])
        self.log = base / "stderr.txt"
        env = {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "MLFOLIO_PROJECT_DIR": str(Path(__file__).resolve().parents[1]),
            "MLFOLIO_USER": "pytest",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [str(EXE), "run", str(self.params), "--engine", "kfp-local"]
                + ["--runs-root", str(self.runs_root)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=base,
                start_new_session=True,  # its own process group: Ctrl-C reaches all of it
            )

    def mine(self, pgrp: int, cmdline: str) -> bool:
        """A process of this run: in the runner's group (its tasks), or naming its TMPDIR
        (task files, and the stage kernels, which run in sessions of their own)."""
        return pgrp == self.proc.pid or str(self.tmp) in cmdline

    def workers(self) -> dict[int, str]:
        return processes(
            lambda pgrp, cmd: (
                self.mine(pgrp, cmd)
                and "--function_to_execute tune_worker" in cmd
                and not cmd.startswith("sh ")
            )
        )

    def leftovers(self) -> dict[int, str]:
        end = time.monotonic() + SETTLE_S
        while (left := processes(self.mine)) and time.monotonic() < end:
            time.sleep(0.2)
        return left

    def snapshot(self, rc: int | None) -> dict[str, Any]:
        """What the stopped runner left behind (before any clean-up of ours)."""
        folders = list(self.runs_root.iterdir())
        folder = folders[0] if folders else None
        manifest_path = folder / "manifest.json" if folder else None
        index = folder / "index.html" if folder else None
        runs = [
            (r.info.run_name, r.info.status)
            for exp in self.client.search_experiments()
            for r in self.client.search_runs([exp.experiment_id])
        ]
        return {
            "rc": rc,
            "stderr": self.log.read_text(),
            "folder": folder,
            "manifest": (
                json.loads(manifest_path.read_text())
                if manifest_path and manifest_path.exists()
                else None
            ),
            "index": index.read_text() if index and index.exists() else None,
            "runs": runs,
            "leftovers": self.leftovers(),
            "tmp_left": sorted(p.name for p in self.tmp.iterdir()),
        }

    def kill_all(self) -> None:
        """Our clean-up: whatever of this run still lives (the fault under test)."""
        for pid in processes(self.mine):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def databases() -> Iterator[list[str]]:
    """Two new study databases on the local PostgreSQL; a missing server fails."""
    names = [f"mlfolio_kfp_stop_{secrets.token_hex(4)}" for _ in range(2)]
    try:
        for name in names:
            team._admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - name the cause in the failure
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is needed: {str(exc).splitlines()[0]}")
    yield names
    for name in names:
        team.drop_database(name)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, databases) -> dict[str, dict[str, Any]]:
    """Both runners, started together (their stages overlap on the two cores), each
    signalled once its two tune workers run; what each left behind."""
    base = tmp_path_factory.mktemp("kfp")
    sends = {
        "SIGINT": lambda pid: os.killpg(pid, signal.SIGINT),  # Ctrl-C: the whole group
        "SIGTERM": lambda pid: os.kill(pid, signal.SIGTERM),  # a scheduler: the runner
    }
    runners = {
        name: Runner(base / name[3:4].lower(), db)
        for name, db in zip(sends, databases, strict=True)
    }
    signalled: dict[str, float] = {}
    out: dict[str, dict[str, Any]] = {}
    try:
        end = time.monotonic() + DEADLINE_S
        while len(signalled) < len(runners) and time.monotonic() < end:
            for name, runner in runners.items():
                if name in signalled:
                    continue
                if runner.proc.poll() is not None:
                    pytest.fail(
                        f"{name} runner ended (exit {runner.proc.returncode}) before its "
                        f"tune workers ran:\n{runner.log.read_text()[-3000:]}"
                    )
                if len(runner.workers()) >= 2:
                    sends[name](runner.proc.pid)
                    signalled[name] = time.monotonic()
            time.sleep(0.3)
        missing = set(runners) - set(signalled)
        assert not missing, f"no two tune workers within {DEADLINE_S} s for {missing}"
        for name, runner in runners.items():
            try:
                rc = runner.proc.wait(timeout=max(1.0, signalled[name] + EXIT_S - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = None  # still running: the signal was ignored
            out[name] = runner.snapshot(rc)
    finally:
        for runner in runners.values():
            runner.kill_all()
    return out


def assert_stopped(snap: dict[str, Any], signame: str, code: int) -> None:
    assert snap["rc"] == code, snap["stderr"][-3000:]
    assert f"interrupted by {signame} during stage 'tune'" in snap["stderr"], snap["stderr"]
    assert "FAILURE" not in snap["stderr"]  # kfp's view of the tasks it saw killed
    # the tasks and all they started are gone: no orphaned tune_worker, no kernel
    assert snap["leftovers"] == {}, snap["leftovers"]
    assert snap["tmp_left"] == [], "the stopped tasks' temporary files were left"
    m = snap["manifest"]
    assert m is not None, f"no manifest in {snap['folder']}"
    assert (m["status"], m["engine"]) == ("interrupted", "kfp-local")
    assert m["interrupted"]["signal"] == signame and m["interrupted"]["stage"] == "tune"
    assert m["interrupted"]["tasks"] == ["tune_worker"]
    statuses = {s: m["stages"][s]["status"] for s in STAGE_NAMES}
    # train and the tune workers both follow preprocess: kfp runs either first
    ran = [s for s in ("ingest", "preprocess", "train") if statuses[s] == "succeeded"]
    assert ran in (["ingest", "preprocess"], ["ingest", "preprocess", "train"]), statuses
    assert statuses["tune"] == "interrupted"
    assert [statuses[s] for s in ("evaluate", "register", "deploy")] == ["not run"] * 3
    # the default engine resumes the folder from there (--from, --run-dir)
    resume = "tune" if "train" in ran else "train"
    assert m["interrupted"]["resume_from"] == resume
    assert f"resume with --from {resume} --run-dir {m['run_dir']}" in snap["stderr"]
    verdict = gate_status.decide(m, m["run_dir"])
    assert verdict.exit_code == 3 and f"by {signame} during stage tune" in verdict.reason
    assert snap["index"] is not None and 'id="run-status">interrupted' in snap["index"]
    assert f"interrupted by {signame}" in snap["index"]
    # MLflow: nothing left RUNNING; the parent run (its exit task never ran) KILLED
    runs = dict(snap["runs"])
    assert [run for run in snap["runs"] if run[1] == "RUNNING"] == []
    assert runs[Path(m["run_dir"]).name] == "KILLED", snap["runs"]
    assert {runs[s] for s in ran} == {"FINISHED"}


@pytest.mark.slow
def test_ctrl_c_stops_the_kfp_local_tasks_and_records_the_run_interrupted(stopped):
    assert_stopped(stopped["SIGINT"], "SIGINT", 130)


@pytest.mark.slow
def test_sigterm_stops_the_kfp_local_tasks_and_records_the_run_interrupted(stopped):
    assert_stopped(stopped["SIGTERM"], "SIGTERM", 143)


def test_a_second_signal_records_the_run_from_the_task_results_at_hand(tmp_path, write_params):
    """The second signal stops at once (no MLflow calls): the record says interrupted,
    keeps what the finished tasks handed over, and is not rewritten once written."""
    from mlfolio import config
    from mlfolio.pipeline.kfp import local, steps

    cfg = config.load(write_params())
    folder, root = tmp_path / "run", tmp_path / "root"
    folder.mkdir()
    results = {"ingest": "succeeded", "preprocess": "failed"}
    for stage, status in results.items():
        entry = root / stage / "products" / steps.ENTRY_DIR / f"{stage}.json"
        entry.parent.mkdir(parents=True)
        doc = {"stage": stage, "status": status, "notebook": f"{stage}.ipynb", "duration_s": 1}
        entry.write_text(json.dumps(doc))
    local._record_forced_stop(folder, root, cfg, "2026-12-06T18:00:00+00:00", "SIGTERM")
    m = json.loads((folder / "manifest.json").read_text())
    assert (m["status"], m["engine"]) == ("interrupted", "kfp-local")
    assert m["interrupted"]["signal"] == "SIGTERM" and m["interrupted"]["forced"] is True
    statuses = [m["stages"][s]["status"] for s in STAGE_NAMES]
    assert statuses == ["succeeded", "failed"] + ["not run"] * 5
    assert 'id="run-status">interrupted' in (folder / "index.html").read_text()
    before = (folder / "manifest.json").read_bytes()
    local._record_forced_stop(folder, root, cfg, "2026-12-06T18:00:00+00:00", "SIGINT")
    assert (folder / "manifest.json").read_bytes() == before  # the full record stays


def test_the_stop_message_never_claims_runs_it_could_not_end(tmp_path):
    from mlfolio.pipeline.kfp import local

    info = {"signal": "SIGTERM", "stage": "tune", "cell_index": 7, "resume_from": "tune"}
    ended = local._stop_message(info, tmp_path, None)
    assert ended.startswith("run interrupted by SIGTERM during stage 'tune' (cell 7)")
    assert "MLflow runs ended KILLED" in ended and f"--from tune --run-dir {tmp_path}" in ended
    down = local._stop_message(info, tmp_path, "no answer ([Errno 111] Connection refused)")
    assert "ended KILLED" not in down
    assert "may still read RUNNING (tracking store: no answer ([Errno 111]" in down
