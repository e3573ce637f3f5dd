"""The run folder's lock, and the runs a killed runner abandoned: with the lock held no
runner is alive, so what still says ``running`` (record, MLflow runs) was abandoned."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mlfolio.errors import ConfigError
from mlfolio.pipeline.manifest import Manifest

log = logging.getLogger(__name__)


def lock_run_dir(folder: Path) -> Any:
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


def end_open_runs(client: Any, parent_run_id: str, status: str) -> list[str]:
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


def close_abandoned(folder: Path, manifest: Manifest) -> None:
    """A runner killed outright (kill -9, power loss) leaves its record at ``running`` and
    its MLflow runs RUNNING. With the folder's lock held no runner is alive: end them,
    FAILED when the run was recorded failed (e.g. the store stopped answering while it
    ended), else KILLED."""
    ended_as = "FAILED" if manifest.status == "failed" else "KILLED"
    if manifest.abandoned():
        manifest.save()
    mlf = manifest.mlflow
    if mlf.get("parent_run_id") and mlf.get("tracking_uri"):
        from mlflow.tracking import MlflowClient

        from mlfolio.tracking import cause, store_errors

        try:
            ended = end_open_runs(
                MlflowClient(tracking_uri=mlf["tracking_uri"]), mlf["parent_run_id"], ended_as
            )
        except store_errors() as exc:  # moved, reset or still down: the run says so itself
            log.warning("%s: could not end its abandoned MLflow runs: %s", folder, cause(exc))
            return
        if ended:
            log.info("%s: ended %d MLflow run(s) left RUNNING as %s", folder, len(ended), ended_as)
