"""Issue 21, the runner's rows: the tracking store or the disk fails, the record stays true.

Each test injects a real fault into an ingest-only run (the earliest stage that shows the
behaviour; in-process, so the run's own ``echo`` line says when the fault comes):

- a SQLite-backed ``mlflow server`` stopped while the stage runs, then started again;
- a second process holding ``BEGIN EXCLUSIVE`` on the SQLite store while the stage runs;
- the store's folder made read-only (a read-only bind mount; ``chmod`` when not root);
- a run folder on a small tmpfs, filled while the stage runs and after it.

Each asserts the error (class, exit code, one line naming the cause), the manifest and
index, gate-status and the MLflow run statuses; the store rows resume the folder once the
store is back and check that the earlier attempt's runs were ended FAILED.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlfolio import pipeline
from mlfolio.errors import RecordError, StageError, TrackingError
from mlfolio.pipeline import gate_status
from mlfolio.pipeline.manifest import Manifest, StageEntry
from mlfolio.pipeline.record import Recorder
from mlfolio.pipeline.runlock import close_abandoned

from . import team

pytestmark = pytest.mark.slow

LIMIT_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFOLIO_SQLITE_BUSY_TIMEOUT_MS",
)
INGEST_RUNNING = "ingest     running"
INGEST_OK = "ingest     ok in"
LOCKER = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
    "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()"
)


@pytest.fixture(autouse=True)
def _restore_limits(monkeypatch):
    """The runner sets the tracking limits in its process's environment: give them back."""
    for name in LIMIT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """A SQLite tracking store with MLflow's tables, created once (its migrations take
    seconds); each test runs on a copy."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture
def store(template_store, tracking_dir) -> str:
    db = tracking_dir / "mlflow.db"
    shutil.copy(template_store, db)
    return f"sqlite:///{db}"


def on_line(marker: str, action: Callable[[], None], lines: list[str]) -> Callable[[str], None]:
    """An ``echo`` that records the runner's lines and runs ``action`` once, at the first
    line containing ``marker``."""
    done: list[bool] = []

    def echo(line: str) -> None:
        lines.append(line)
        if marker in line and not done:
            done.append(True)
            action()

    return echo


def read_manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def statuses(uri: str, run_ids: list[str]) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    return [client.get_run(run_id).info.status for run_id in run_ids]


def still_running(uri: str) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("churn")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return [r.info.run_name for r in runs]


def resume_checking_parent(params: Path, run_dir: Path, uri: str, parent: str) -> str:
    """Resume the folder's ingest; return the parent run's status as the resumed runner
    found it at its first stage line (after it ended what the earlier attempt left)."""
    seen: list[str] = []
    echo = on_line(INGEST_RUNNING, lambda: seen.extend(statuses(uri, [parent])), [])
    m = pipeline.run(params, stages=["ingest"], run_dir=run_dir, echo=echo).data
    assert m["status"] == "succeeded"
    assert still_running(uri) == []
    return seen[0]


# -- the tracking store -----------------------------------------------------------------
def _start_server(db: Path, port: int, log: Path) -> subprocess.Popen:
    artifacts = ["--default-artifact-root", (db.parent / "artifacts").as_uri()]
    proc = team.spawn_mlflow_server(f"sqlite:///{db}", artifacts, port, dict(os.environ), log)
    team._wait_http(f"http://127.0.0.1:{port}/health", proc, log)
    return proc


def test_tracking_server_stopped_during_a_stage_then_resumed(
    write_params, store, tracking_dir, runs_root
):
    """Before: MLflow's 7 retries per call, then the runner's own _fail_stage_run raised
    a raw traceback (~9.5 min in tune); no index, the runs left RUNNING."""
    db, port, log = tracking_dir / "mlflow.db", team.free_port(), tracking_dir / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = _start_server(db, port, log)
    try:
        params = write_params(
            tracking={"tracking_uri": url, "request_retries": 1, "request_timeout_s": 5}
        )
        lines: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(StageError) as info:
            pipeline.run(
                params,
                stages=["ingest"],
                runs_root=runs_root,
                echo=on_line(INGEST_RUNNING, lambda: team.stop(server), lines),
            )
        took = time.monotonic() - t0
        message = one_line(info.value)
        assert info.value.exit_code == 1 and info.value.stage == "ingest"
        assert f"tracking store {url} failed while marking stage ingest's run FAILED" in message
        assert "Connection refused" in message and "--run-dir" in message
        assert took < 90, took  # bounded retries: seconds, not MLflow's minutes
        (run_dir,) = runs_root.iterdir()
        m = read_manifest(run_dir)
        assert m["status"] == "failed" and m["failed_stage"] == "ingest"
        assert "Connection refused" in m["failure"]["cause"]
        assert "Connection refused" in (run_dir / "index.html").read_text()
        verdict = gate_status.check(run_dir)
        assert verdict.exit_code == 3 and verdict.status == "failed"
        parent = m["mlflow"]["parent_run_id"]

        server = _start_server(db, port, log)  # the store is back: the run was left RUNNING
        assert statuses(url, [parent]) == ["RUNNING"]
        assert resume_checking_parent(params, run_dir, url, parent) == "FAILED"
    finally:
        team.stop(server)


def test_sqlite_store_locked_by_another_process_during_a_stage_then_resumed(
    write_params, store, tracking_dir, runs_root
):
    """A second process holds BEGIN EXCLUSIVE on the store from the stage's start until the
    run has ended (a busy timeout of 1 s by parameter keeps it short). Before: train FAILED
    "database is locked", then the runner crashed on its own tracking call, runs RUNNING."""
    db = tracking_dir / "mlflow.db"
    params = write_params(tracking={"sqlite_busy_timeout_s": 1})
    holder: list[subprocess.Popen] = []

    def take_lock() -> None:  # held until its stdin closes
        proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holder.append(proc)
        assert proc.stdout.readline().strip() == "locked"

    try:
        with pytest.raises(StageError) as info:
            pipeline.run(
                params,
                stages=["ingest"],
                runs_root=runs_root,
                echo=on_line(INGEST_RUNNING, take_lock, []),
            )
    finally:
        for proc in holder:
            proc.stdin.close()  # the lock is released
            proc.wait(timeout=10)
    message = one_line(info.value)
    assert info.value.exit_code == 1
    assert "database is locked" in message
    assert f"tracking store {store} failed while marking stage ingest's run FAILED" in message
    (run_dir,) = runs_root.iterdir()
    m = read_manifest(run_dir)
    assert m["status"] == "failed" and m["failed_stage"] == "ingest"
    assert "database is locked" in m["stages"]["ingest"]["error"]["evalue"]
    assert "database is locked" in m["failure"]["cause"]
    assert "database is locked" in (run_dir / "index.html").read_text()
    assert gate_status.check(run_dir).exit_code == 3
    parent = m["mlflow"]["parent_run_id"]
    assert statuses(store, [parent]) == ["RUNNING"]  # the store was locked when it ended
    # what a resume does first (the server test resumes through the runner)
    close_abandoned(run_dir, Manifest.load(run_dir))
    assert statuses(store, [parent]) == ["FAILED"] and still_running(store) == []


@pytest.fixture
def read_only(tracking_dir) -> Iterator[Callable[[], None]]:
    """make() turns the store's folder read-only: a read-only bind mount as root (root
    writes through chmod), chmod otherwise."""
    mounted: list[bool] = []

    def make() -> None:
        if os.geteuid() == 0:
            for args in (["--bind"], ["-o", "remount,bind,ro"]):
                subprocess.run(["mount", *args, str(tracking_dir), str(tracking_dir)], check=True)
                mounted.append(True)
        else:
            for path in tracking_dir.iterdir():
                path.chmod(0o444)
            tracking_dir.chmod(0o555)

    yield make
    if mounted:
        subprocess.run(["umount", "-l", str(tracking_dir)], check=True)  # MLflow holds it open
    else:
        tracking_dir.chmod(0o755)


def test_read_only_sqlite_store_fails_in_one_line_with_a_manifest(
    write_params, store, runs_root, read_only
):
    """Before: a 219-line SQLAlchemy traceback from the parent run's start, and a run
    folder without a manifest."""
    params = write_params()
    read_only()
    with pytest.raises(TrackingError) as info:
        pipeline.run(
            params, stages=["ingest"], runs_root=runs_root, echo=lambda _: None, warm_kernels=False
        )
    message = one_line(info.value)
    assert info.value.exit_code == 1
    assert message.startswith(
        f"tracking store {store} failed while starting the pipeline's parent run: "
        "attempt to write a readonly database"
    ), message
    (run_dir,) = runs_root.iterdir()
    assert str(run_dir) in message
    m = read_manifest(run_dir)
    assert m["status"] == "failed" and m["failed_stage"] is None
    assert "readonly database" in m["failure"]["cause"]
    assert "readonly database" in (run_dir / "index.html").read_text()
    verdict = gate_status.check(run_dir)
    assert verdict.exit_code == 3 and "readonly database" in verdict.reason


# -- the disk ---------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 2 MB tmpfs for the run folders (a real full disk: ENOSPC from the kernel)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    assert proc.returncode == 0, f"cannot mount a tmpfs (root needed): {proc.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path, leave: int = 0) -> Callable[[], None]:
    """An action filling ``disk`` up to ``leave`` free bytes."""

    def action() -> None:
        st = os.statvfs(disk)
        free = st.f_bavail * st.f_frsize - leave
        try:
            with (disk / "filler").open("wb") as out:
                out.write(b"\0" * max(free, 0))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC and leave == 0

    return action


def test_disk_full_while_a_stage_writes_fails_the_stage_and_records_it(
    write_params, store, small_disk
):
    """The disk is filled as ingest starts, leaving room for its data and notebook but not
    for its 280 KB HTML page. Before: an OSError traceback from the HTML rendering, the
    manifest still 'running', no index."""
    params = write_params()
    with pytest.raises(StageError) as info:
        pipeline.run(
            params,
            stages=["ingest"],
            runs_root=small_disk,
            echo=on_line(INGEST_RUNNING, fill(small_disk, leave=220_000), []),
        )
    message = one_line(info.value)
    assert info.value.exit_code == 1
    assert message == (
        "stage 'ingest' failed: OSError: cannot write 01_ingest.html: No space left on device"
    )
    (run_dir,) = [p for p in small_disk.iterdir() if p.is_dir()]
    m = read_manifest(run_dir)
    assert m["status"] == "failed" and m["failed_stage"] == "ingest"
    assert "No space left on device" in m["stages"]["ingest"]["error"]["evalue"]
    assert not (run_dir / "01_ingest.html").exists()  # no half page, its space given back
    assert not list(run_dir.glob("*.tmp"))
    assert "No space left on device" in (run_dir / "index.html").read_text()
    assert gate_status.check(run_dir).exit_code == 3
    client = MlflowClient(tracking_uri=store)
    parent = m["mlflow"]["parent_run_id"]
    (stage_run,) = client.search_runs(
        [client.get_experiment_by_name("churn").experiment_id], "tags.`mlfolio.stage` = 'ingest'"
    )
    assert statuses(store, [parent, stage_run.info.run_id]) == ["FAILED", "FAILED"]


def test_disk_full_at_the_end_never_reads_succeeded(write_params, store, small_disk):
    """The disk is filled once ingest succeeded: the index and the manifest cannot be
    written. Before: an OSError traceback, the parent run left RUNNING (and, at the end of
    a whole run, where the manifest still fit but the index did not, a manifest reading
    'succeeded' and gate-status 'promoted')."""
    params = write_params()
    with pytest.raises(RecordError) as info:
        pipeline.run(
            params,
            stages=["ingest"],
            runs_root=small_disk,
            echo=on_line(INGEST_OK, fill(small_disk), []),
        )
    message = one_line(info.value)
    (run_dir,) = [p for p in small_disk.iterdir() if p.is_dir()]
    assert info.value.exit_code == 1
    manifest = run_dir / "manifest.json"
    assert message.startswith(f"cannot write {manifest}: No space left on device"), message
    assert f"the run's record could not be updated: {manifest} still says 'running'" in message
    m = read_manifest(run_dir)
    assert m["status"] == "running"  # never 'succeeded': gate-status says not finished
    assert not (run_dir / "index.html").exists()
    verdict = gate_status.check(run_dir)
    assert verdict.exit_code == 3 and verdict.status == "interrupted"
    assert statuses(store, [m["mlflow"]["parent_run_id"]]) == ["FAILED"]

    # The run's last writes: the index first, then the manifest (what gate-status reads)
    # commits the status. One free page: the index fits, the manifest's new copy does not;
    # the index that said 'succeeded' is removed, the manifest still says 'running'.
    (small_disk / "filler").unlink()
    folder = small_disk / "last-writes"
    folder.mkdir()
    last = Manifest(folder / "manifest.json", {"experiment": "churn", "status": "running"})
    last.put("ingest", StageEntry(status="succeeded", notebook="01_ingest.ipynb"))
    last.save()
    last.succeed()
    fill(small_disk, leave=4096)()
    recorder = Recorder(last, folder, store)
    assert recorder.write() is False
    assert read_manifest(folder)["status"] == "running"
    assert not (folder / "index.html").exists()
    assert "still says 'running'" in recorder.suffix()
