"""SIGINT/SIGTERM while a run executes, the run folder's lock, runs a killed runner left
RUNNING, and re-runs with other parameters (refused, or forced and marked stale)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlfolio.config import Config
from mlfolio.errors import ConfigError, RunInterrupted
from mlfolio.graph import PIPELINES, Stage
from mlfolio.pipeline.engine import WarmKernel
from mlfolio.pipeline.provenance import Manifest, _upstream_hashes

log = logging.getLogger(__name__)


# -- interruptions, resumes and re-runs --------------------------------------------------
class _Signals:
    """SIGINT and SIGTERM while a run executes.

    The first one SIGKILLs every kernel of the run at once (papermill then returns the
    partial notebook) and is only recorded; the runner checks ``signum`` between its steps
    and ends the run as ``interrupted``. A second one raises KeyboardInterrupt at once.
    Handlers exist only in the main thread (Python runs them nowhere else) and are restored
    when the run returns.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.kernels: list[WarmKernel] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            # None: a handler set outside Python; the default is the closest we can restore
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        for kernel in self.kernels:
            kernel.kill()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def track(self, kernel: WarmKernel) -> WarmKernel:
        self.kernels.append(kernel)
        return kernel

    def release(self, kernel: WarmKernel) -> None:
        kernel.shutdown()
        self.kernels.remove(kernel)

    def release_all(self) -> None:
        while self.kernels:
            self.release(self.kernels[0])


def _lock_run_dir(folder: Path) -> Any:
    """Hold the run folder's lock for the whole run: a second runner on the same folder is
    refused, and a runner that holds it knows no other one is alive."""
    import fcntl

    handle = (folder / ".mlfolio.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(
            f"{folder}: another mlfolio run is using this run folder (pid "
            f"{holder}); wait for it to end, or stop it first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _end_open_runs(client: Any, parent_run_id: str, status: str) -> list[str]:
    """End every RUNNING MLflow run under ``parent_run_id`` (stage runs, their trials) and
    the parent itself when it still runs; return their ids."""
    from mlflow.exceptions import MlflowException

    exp = client.get_run(parent_run_id).info.experiment_id
    running = client.search_runs([exp], "attributes.status = 'RUNNING'", max_results=50000)
    parent_of = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in running}

    def under(run_id: str | None) -> bool:
        seen: set[str] = set()
        while run_id and run_id not in seen:
            if run_id == parent_run_id:
                return True
            seen.add(run_id)
            if run_id not in parent_of:  # an ancestor that has ended already
                try:
                    parent_of[run_id] = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
                except MlflowException:
                    return False
            run_id = parent_of[run_id]
        return False

    ended = [r.info.run_id for r in running if under(r.info.run_id)]
    for run_id in ended:
        client.set_terminated(run_id, status=status)
    return ended


def _close_abandoned(folder: Path, manifest: Manifest) -> None:
    """A runner killed outright (kill -9, power loss) leaves its record at ``running`` and
    its MLflow runs RUNNING. With the folder's lock held no runner is alive: end them,
    FAILED when the run was recorded failed (e.g. the store stopped answering while it
    ended), else KILLED."""
    data = manifest.data
    ended_as = "FAILED" if data.get("status") == "failed" else "KILLED"
    if data.get("status") == "running":
        stages = [
            name for name, s in data.get("stages", {}).items() if s.get("status") == "running"
        ]
        for name in stages:
            data["stages"][name].update(
                status="interrupted",
                interrupted={
                    "signal": None,
                    "cell_index": None,
                    "why": "the runner ended without recording this stage (killed)",
                },
            )
        data.update(
            status="interrupted",
            interrupted={
                "signal": None,
                "stage": stages[0] if stages else None,
                "cell_index": None,
                "at": data.get("updated"),
                "why": "the runner ended without recording the run",
            },
        )
        manifest.save()
    mlf = data.get("mlflow") or {}
    if mlf.get("parent_run_id") and mlf.get("tracking_uri"):
        from mlflow.tracking import MlflowClient

        from mlfolio.tracking import cause, store_errors

        try:
            ended = _end_open_runs(
                MlflowClient(tracking_uri=mlf["tracking_uri"]), mlf["parent_run_id"], ended_as
            )
        except store_errors() as exc:  # moved, reset or still down: the run says so itself
            log.warning("%s: could not end its abandoned MLflow runs: %s", folder, cause(exc))
            return
        if ended:
            log.info("%s: ended %d MLflow run(s) left RUNNING as %s", folder, len(ended), ended_as)


def _stage_parameters(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """The parameter sections a stage reads (what its result depends on)."""
    return {key: params.get(key) for key in stage.sections}


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every value that differs; mappings compared per key."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            diff
            for key in sorted(set(old) | set(new), key=str)
            for diff in _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _backfill_parameters(manifest: Manifest, kind: str) -> None:
    """Folders recorded before stages kept their own parameters: a stage that ran did so
    with the run's parameters of that time."""
    recorded = manifest.data.get("parameters")
    if recorded is None:
        return
    for stage in PIPELINES[kind]:
        entry = manifest.data.get("stages", {}).get(stage.name)
        if entry and entry.get("status") != "not run" and "parameters" not in entry:
            entry["parameters"] = _stage_parameters(stage, recorded)


def _check_parameters(
    folder: Path, manifest: Manifest, cfg: Config, selected: list[Stage], kind: str, force: bool
) -> list[str]:
    """Refuse a re-run whose parameters differ from the ones the folder's stages ran with
    when stages that keep their results would then disagree with the record: a stage that
    is not re-run but reads a changed key, or one downstream of a re-run stage whose keys
    changed. ``force`` runs anyway (they are marked stale). Returns the changed keys."""
    params = cfg.to_dict()
    names = {s.name for s in selected}
    recorded_stages = manifest.data.get("stages", {})
    upstream: list[tuple[str, Any, Any]] = []  # changes of re-run stages, seen downstream
    kept: dict[str, list[tuple[str, Any, Any]]] = {}
    changed: dict[str, tuple[str, Any, Any]] = {}
    for stage in PIPELINES[kind]:
        entry = recorded_stages.get(stage.name) or {}
        ran_with = entry.get("parameters")
        diff = [] if ran_with is None else _differences(ran_with, _stage_parameters(stage, params))
        if stage.name in names:
            upstream += diff
            changed.update({d[0]: d for d in diff})
        elif entry.get("status") == "succeeded" and (diff or upstream):
            kept[stage.name] = diff + upstream
            changed.update({d[0]: d for d in diff + upstream})
    if kept and not force:
        diffs = {d[0]: d for stage_diffs in kept.values() for d in stage_diffs}
        what = "; ".join(
            f"{key} (ran with {old!r}, now {new!r})"
            for key, old, new in (diffs[k] for k in sorted(diffs))
        )
        raise ConfigError(
            f"{folder}: parameters differ from the ones its stages ran with: {what}. "
            f"Stage(s) {', '.join(kept)} would keep results made with the old values. "
            f"Re-run them too (e.g. --from {selected[0].name}), or give --force to run "
            f"anyway and mark them stale"
        )
    return sorted(changed)


def _mark_stale(
    manifest: Manifest, cfg: Config, folder: Path, selected: list[Stage], kind: str
) -> None:
    """A stage not re-run now is stale when its parameters or the upstream products it read
    changed since it ran; ``stale`` lists why (the index shows it)."""
    params = cfg.to_dict()
    names = {s.name for s in selected}
    for stage in PIPELINES[kind]:
        entry = manifest.data["stages"].get(stage.name)
        if not entry or stage.name in names or entry.get("status") != "succeeded":
            continue
        reasons = []
        if entry.get("parameters") is not None:
            keys = [
                d[0] for d in _differences(entry["parameters"], _stage_parameters(stage, params))
            ]
            if keys:
                reasons.append(f"it ran with other parameters: {', '.join(keys)}")
        before = (entry.get("inputs") or {}).get("upstream")
        if before is not None:
            now = _upstream_hashes(stage, folder)
            changed = sorted(p for p in set(before) | set(now) if before.get(p) != now.get(p))
            if changed:
                reasons.append(f"its inputs changed since it ran: {', '.join(changed)}")
        if reasons:
            entry["stale"] = reasons
        else:
            entry.pop("stale", None)


def _running_cell(notebook: Path) -> int | None:
    """The cell that was executing when the kernel stopped: the last one papermill started
    (it marks even that one "completed" once the kernel is gone)."""
    if not notebook.exists():
        return None
    started = [
        index
        for index, cell in enumerate(json.loads(notebook.read_text())["cells"])
        if cell.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    return started[-1] if started else None


def _interrupted(
    manifest: Manifest,
    folder: Path,
    rest: list[Stage],
    entry: dict[str, Any] | None,
    sigs: _Signals,
) -> RunInterrupted:
    """Record the interruption: the stage that was executing (``entry``, None between
    stages) ``interrupted``, the stages after it ``not run``."""
    stage = rest[0] if entry is not None else None
    cell = None
    if entry is not None:
        cell = _running_cell(folder / entry["notebook"])
        entry.pop("error", None)  # the dead kernel is our doing, not the stage's error
        entry.update(status="interrupted", interrupted={"signal": sigs.name, "cell_index": cell})
    for later in rest[1:] if stage else rest:
        manifest.data["stages"][later.name] = {"status": "not run", "notebook": later.notebook}
    manifest.data.update(
        status="interrupted",
        failed_stage=None,
        failed_cell=None,
        interrupted={
            "signal": sigs.name,
            "stage": stage.name if stage else None,
            "cell_index": cell,
            "resume_from": rest[0].name,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    manifest.save()
    where = (
        f"during stage '{stage.name}'" + (f" (cell {cell})" if cell is not None else "")
        if stage
        else "between stages"
    )
    return RunInterrupted(
        sigs.signum or signal.SIGINT,
        f"run interrupted by {sigs.name} {where}; resume with "
        f"--from {rest[0].name} --run-dir {folder}",
    )


def _record_forced_stop(manifest: Manifest, folder: Path, sigs: _Signals) -> None:
    """The second signal: mark what still says ``running`` interrupted (the next resume
    ends the MLflow runs); no MLflow calls, it must be quick."""
    from mlfolio.pipeline import report

    data = manifest.data
    if data.get("status") != "running":
        return
    for entry in data.get("stages", {}).values():
        if entry.get("status") == "running":
            entry.update(
                status="interrupted", interrupted={"signal": sigs.name, "cell_index": None}
            )
    data.update(
        status="interrupted",
        interrupted={
            "signal": sigs.name,
            "stage": None,
            "cell_index": None,
            "forced": True,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    manifest.save()
    report.write_index(folder, data)
