"""The typed run record: each transition of a run and of a stage, and folders written by
the old dict-based code reading and writing back unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlfolio.errors import ConfigError
from mlfolio.pipeline.manifest import Manifest, StageEntry

# A manifest as the dict-based runner wrote it (keys and shapes of every kind of entry:
# executed, reused, stale, failed, interrupted, not run, skipped), with keys this
# version does not declare (``actions``, ``reproduction``, per-stage timings).
OLD = {
    "experiment": "churn",
    "kind": "training",
    "run_dir": "/runs/20261206T192008Z-churn-28b36b",
    "created": "2026-12-06T19:20:08+00:00",
    "stages": {
        "ingest": {
            "status": "succeeded",
            "notebook": "01_ingest.ipynb",
            "html": "01_ingest.html",
            "started": "2026-12-06T19:20:11+00:00",
            "duration_s": 9.114,
            "peak_rss_mb": 201.3,
            "cells_s": 3.2,
            "setup_cell_s": 2.5,
            "html_s": 0.9,
            "mlflow_run_id": "a1",
            "outputs": {"ingest.json": "ab12"},
            "parameters": {"seed": 7},
            "overrides": {},
            "inputs": {"hash": "h1", "upstream": {}},
            "inputs_hash": "h1",
        },
        "preprocess": {
            "status": "succeeded",
            "notebook": "02_preprocess.ipynb",
            "html": "02_preprocess.html",
            "started": "2026-12-06T19:20:21+00:00",
            "duration_s": 0.004,
            "mlflow_run_id": "b2",
            "reused_from": {
                "run_dir": "/runs/earlier",
                "mlflow_run_id": "b2",
                "executed_in": "/runs/earlier",
                "duration_s": 4.5,
            },
            "outputs": {},
            "stale": ["it ran with other parameters: split.test_size"],
        },
        "train": {
            "status": "failed",
            "notebook": "03_train.ipynb",
            "error": {
                "cell_index": 4,
                "execution_count": 3,
                "ename": "ValueError",
                "evalue": "bad",
                "source": "x = 1",
            },
        },
        "tune": {
            "status": "interrupted",
            "notebook": "04_tune.ipynb",
            "interrupted": {"signal": "SIGINT", "cell_index": 2, "tasks": ["tune_worker"]},
        },
        "evaluate": {"status": "not run", "notebook": "05_evaluate.ipynb"},
        "register": {
            "status": "skipped",
            "notebook": "06_register.ipynb",
            "reason": "the gate did not pass (dsl.If)",
        },
        "deploy": {"status": "succeeded"},  # hand-written: no notebook
    },
    "status": "failed",
    "interrupted": None,
    "failure": None,
    "failed_stage": "train",
    "failed_cell": 4,
    "parameters": {"seed": 7},
    "history": [{"at": "2026-12-06T19:20:08+00:00", "stages": ["ingest"], "force": False}],
    "updated": "2026-12-06T19:21:00+00:00",
    "mlflow": {"parent_run_id": "p0", "tracking_uri": "sqlite:///mlflow.db"},
    "actions": {"dry_run": True},
    "data": {"rows": 7043, "positive_rate": 0.27},  # the data summary, not the property
    "reproduction": {"reproduced": True, "differences": []},
}


def _stages(*names: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=n, notebook=f"{n}.ipynb") for n in names]


def test_an_old_manifest_reads_and_writes_back_unchanged(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(OLD, indent=2))
    manifest = Manifest.load(tmp_path)
    assert manifest.stages["train"].error["cell_index"] == 4
    assert manifest.stages["preprocess"].reused_from["executed_in"] == "/runs/earlier"
    assert manifest.data == OLD
    updated = manifest.updated
    manifest.save()
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again.pop("updated") >= updated
    assert again == {k: v for k, v in OLD.items() if k != "updated"}


def test_a_new_manifest_writes_only_what_it_was_given(tmp_path):
    manifest = Manifest.new(tmp_path, "churn", "monitor")
    manifest.save()
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert set(written) == {"experiment", "kind", "run_dir", "created", "stages", "updated"}
    assert written["kind"] == "monitor" and written["stages"] == {}


def test_a_run_that_begins_runs_a_stage_and_succeeds(tmp_path):
    manifest = Manifest.new(tmp_path, "churn", "training")
    manifest.set(failure={"error": "TrackingError"})  # an earlier attempt's
    manifest.begin({"stages": ["ingest"]}, seed=7)
    assert manifest.status == "running" and manifest.failure is None
    assert manifest.history[-1]["stages"] == ["ingest"] and manifest.data["seed"] == 7
    entry = manifest.put("ingest", StageEntry.running("01_ingest.ipynb", parameters={}))
    assert manifest.running_stages() == ["ingest"]
    entry.succeed()
    entry.ran({"seed": 7}, {}, {"hash": "h", "upstream": {}})
    manifest.set_mlflow(parent_run_id="p1")
    manifest.set_mlflow(tracking_uri="sqlite:///x.db")
    manifest.succeed()
    manifest.set(data={"rows": 10}, gate={"passed": True})  # products.collect's summaries
    data = manifest.data
    assert data["data"] == {"rows": 10} and data["gate"]["passed"]
    assert data["status"] == "succeeded" and data["failed_stage"] is None
    assert data["stages"]["ingest"]["inputs_hash"] == "h"
    assert data["mlflow"] == {"parent_run_id": "p1", "tracking_uri": "sqlite:///x.db"}


def test_a_failed_stage_marks_the_later_ones_not_run(tmp_path):
    manifest = Manifest.new(tmp_path, "churn", "training")
    entry = manifest.put("train", StageEntry.executing("03_train.ipynb"))
    assert entry.html == "03_train.html"
    entry.fail("ValueError", "bad", 4, execution_count=3)
    manifest.stage_failed("train", 4, _stages("tune", "evaluate"))
    data = manifest.data
    assert (data["status"], data["failed_stage"], data["failed_cell"]) == ("failed", "train", 4)
    assert data["stages"]["train"]["error"] == {
        "cell_index": 4,
        "execution_count": 3,
        "ename": "ValueError",
        "evalue": "bad",
    }
    assert data["stages"]["tune"] == {"status": "not run", "notebook": "tune.ipynb"}


def test_an_interrupted_stage_drops_the_dead_kernels_error(tmp_path):
    manifest = Manifest.new(tmp_path, "churn", "training")
    entry = manifest.put("tune", StageEntry.executing("04_tune.ipynb"))
    entry.fail("DeadKernelError", "kernel died")  # our SIGKILL, not the stage's error
    entry.interrupt("SIGTERM", 3)
    manifest.not_run(_stages("evaluate"))
    manifest.interrupt({"signal": "SIGTERM", "stage": "tune", "cell_index": 3})
    data = manifest.data
    assert "error" not in data["stages"]["tune"]
    assert data["stages"]["tune"]["interrupted"] == {"signal": "SIGTERM", "cell_index": 3}
    assert data["status"] == "interrupted" and data["interrupted"]["at"]
    assert data["stages"]["evaluate"]["status"] == "not run"


def test_a_second_signal_and_an_abandoned_run_interrupt_what_still_runs(tmp_path):
    forced = Manifest.new(tmp_path, "churn", "training")
    assert forced.forced_stop("SIGINT") is False  # never began: nothing to say
    forced.begin({})
    forced.put("train", StageEntry.running("03_train.ipynb"))
    assert forced.forced_stop("SIGINT") is True
    assert forced.interrupted["forced"] and forced.stages["train"].status == "interrupted"

    killed = Manifest(tmp_path / "manifest.json", {"status": "running", "updated": "t0"})
    killed.put("tune", StageEntry.running("04_tune.ipynb"))
    assert killed.abandoned() is True
    assert killed.interrupted["stage"] == "tune" and killed.interrupted["at"] == "t0"
    assert killed.stages["tune"].interrupted["why"].endswith("(killed)")
    assert killed.abandoned() is False  # recorded now


@pytest.mark.parametrize("status", ["running", "succeeded"])
def test_a_failure_while_recording_is_never_more_optimistic(tmp_path, status):
    manifest = Manifest(tmp_path / "manifest.json", {"status": status})
    manifest.put("evaluate", StageEntry.running("05_evaluate.ipynb"))
    manifest.fail(OSError(28, "No space left on device"), "No space left on device")
    assert manifest.status == "failed" and manifest.failed_stage == "evaluate"
    assert manifest.stages["evaluate"].error["ename"] == "OSError"
    assert manifest.failure["cause"] == "No space left on device"


def test_an_interrupted_run_that_fails_to_record_stays_interrupted(tmp_path):
    manifest = Manifest(tmp_path / "manifest.json", {"status": "interrupted"})
    manifest.fail(RuntimeError("store down"), "store down")
    assert manifest.status == "interrupted" and manifest.failure["error"] == "RuntimeError"


def test_a_reused_entry_names_the_run_that_executed_it(tmp_path):
    earlier = StageEntry.model_validate(OLD["stages"]["preprocess"])
    entry = StageEntry.reused("02_preprocess.ipynb", earlier, Path("/runs/second"), 0.01)
    assert entry.status == "succeeded" and entry.mlflow_run_id == "b2"
    assert entry.reused_from == {
        "run_dir": "/runs/second",
        "mlflow_run_id": "b2",
        "executed_in": "/runs/earlier",  # not the run it was reused in
        "duration_s": 4.5,
    }
    entry.mark_stale(["its inputs changed since it ran: data/train.parquet"])
    assert entry.to_json()["stale"]
    entry.mark_stale([])
    assert "stale" not in entry.to_json()


def test_an_unknown_stage_status_names_the_field(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"x": {"status": "done"}}}))
    with pytest.raises(ConfigError, match=r"manifest.json: field stages.x.status: Input should be"):
        Manifest.load(tmp_path)
    with pytest.raises(ConfigError, match="no manifest.json"):
        Manifest.load(tmp_path / "nowhere")


def test_an_engine_reports_its_stages_after_the_fact_then_ends_the_run(tmp_path):
    """kfp-local's record: begun when the pipeline began (not when it is assembled), every
    stage as its task reported it, then one outcome: interrupted over failed over ok."""
    began = "2026-12-06T18:00:00+00:00"
    entries = {
        "ingest": StageEntry(status="succeeded", notebook="01_ingest.ipynb", duration_s=1.0),
        "train": StageEntry(status="failed", notebook="03_train.ipynb", error={"cell_index": 2}),
        "tune": StageEntry.not_run("04_tune.ipynb"),
    }

    def record() -> Manifest:
        manifest = Manifest.new(tmp_path, "churn", "training", created=began, engine="kfp-local")
        manifest.begin({"engine": "kfp-local"}, at=began, parameters={"seed": 1})
        manifest.reported(dict(entries))
        return manifest

    failed = record()
    assert failed.created == began and failed.history == [{"at": began, "engine": "kfp-local"}]
    assert list(failed.stages) == ["ingest", "train", "tune"] and failed.status == "running"
    failed.ended("train", 2, None)
    data = failed.data
    assert (data["status"], data["failed_stage"], data["failed_cell"]) == ("failed", "train", 2)
    assert data["engine"] == "kfp-local" and data["stages"]["tune"]["status"] == "not run"

    ok = record()
    ok.ended(None, None, None)
    assert (ok.status, ok.failed_stage) == ("succeeded", None)

    stopped = record()
    stopped.ended("train", 2, {"signal": "SIGINT", "stage": "tune", "resume_from": "train"})
    assert (stopped.status, stopped.failed_stage) == ("interrupted", None)
    assert stopped.interrupted["signal"] == "SIGINT" and stopped.interrupted["at"]

    forced = record()
    assert forced.forced_stop("SIGTERM") is True
    assert forced.interrupted["forced"] and forced.stages["train"].status == "failed"


def test_a_timed_out_attempt_names_its_setting_and_a_retry_lists_the_attempts(tmp_path):
    first = StageEntry.executing("04_tune.ipynb")
    first.fail("DeadKernelError", "Kernel died")  # our kill, not the stage's error
    first.time_out(5, "stages.tune.timeout_s", 3)
    first.duration_s = 5.2
    assert first.status == "failed"
    assert first.error == {
        "cell_index": 3,
        "timeout_s": 5,
        "ename": "StageTimeout",
        "evalue": "the attempt ran past stages.tune.timeout_s = 5 s and was stopped in cell 3",
    }
    kept = first.as_attempt(1, "04_tune.attempt1.ipynb", None)
    assert kept["attempt"] == 1 and kept["notebook"] == "04_tune.attempt1.ipynb"
    assert kept["html"] is None and kept["error"]["ename"] == "StageTimeout"
    assert kept["duration_s"] == 5.2 and "parameters" not in kept

    second = StageEntry.executing("04_tune.ipynb")
    second.succeed()
    second.follows([kept])
    manifest = Manifest.new(tmp_path, "churn", "training")
    manifest.put("tune", second)
    manifest.save()
    again = Manifest.load(tmp_path).stages["tune"]
    assert again.status == "succeeded" and again.attempts == [kept]
    once = StageEntry.executing("05_evaluate.ipynb")
    once.follows([])
    assert "attempts" not in once.to_json()  # a stage that ran once says nothing of it
