"""End to end: `mlfolio monitor` against a registered champion, on the real Telco data.

One weak champion is trained once (a 3-stump xgboost); current data are held-out rows of
its run, as they are (i.i.d.) or with drift injected (shifted charges, a changed contract
mix, shorter tenures) under new customer ids as ``tools/monitor_demo.py`` sends them, with
their real outcomes as labels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlfolio import cli, pipeline
from mlfolio.errors import ConfigError
from mlfolio.pipeline import terminal

from .conftest import (
    CHURN_CSV,
    CHURN_PARAMS,
    ROOT,
    SMALL,
    deep_update,
    load_script,
    require_chromium,
    require_module,
    tracking_section,
)

pytestmark = pytest.mark.slow
QUIET = {"echo": lambda line: None}
WEAK = {
    "training": {
        "models": ["xgboost"],
        "xgboost": {"n_estimators": 3, "max_depth": 1, "learning_rate": 0.1},
    },
    "tuning": {"enabled": False},
}
STRONG = {"training.models": ["logreg"], "tuning.enabled": False}


def monitor_demo():
    """``tools/monitor_demo.py`` as a module (tools/ is not a package)."""
    return load_script(ROOT / "tools" / "monitor_demo.py")


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.tracking = root / "tracking"
        self.tracking.mkdir()
        self.runs = root / "runs"
        self.runs.mkdir()
        self.uri = tracking_section(self.tracking)["tracking_uri"]
        raw = yaml.safe_load(CHURN_PARAMS.read_text())
        raw = deep_update(deep_update(raw, SMALL), WEAK)
        raw = deep_update(
            raw,
            {
                "data": {"uri": str(CHURN_CSV)},
                "tracking": tracking_section(self.tracking),
                "gate": {"min_roc_auc": 0.6},
                "deploy": {"targets": ["kubernetes"]},
                "monitoring": {
                    "retrain": {"min_drift_share": 0.1, "cooldown_hours": 0, "min_rows": 300}
                },
            },
        )
        self.params = root / "params.yaml"
        self.params.write_text(yaml.safe_dump(raw, sort_keys=False))

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def champion(self) -> str:
        return str(self.client().get_model_version_by_alias("churn-classifier", "champion").version)

    def monitor(
        self,
        current: Path,
        dry_run: bool = False,
        echo: Callable[[str], None] = QUIET["echo"],
        **overrides: Any,
    ) -> tuple[pipeline.Manifest, pipeline.Manifest | None]:
        return pipeline.monitor(
            self.params,
            {"monitoring.current": str(current), **overrides},
            dry_run=dry_run,
            runs_root=self.runs,
            echo=echo,
        )

    def run_folders(self) -> set[Path]:
        return set(self.runs.iterdir())


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    env = Env(tmp_path_factory.mktemp("monitor"))
    first = pipeline.run(env.params, runs_root=env.runs, **QUIET)
    env.source = Path(first.data["run_dir"])
    held_out = pd.concat(
        [pd.read_parquet(env.source / "data" / f"{s}.parquet") for s in ("valid", "test")],
        ignore_index=True,
    )
    env.iid = env.root / "iid.csv"
    held_out.to_csv(env.iid, index=False)
    drifted = held_out.copy()
    drifted["monthlycharges"] = drifted["monthlycharges"] * 1.4 + 10
    drifted.loc[drifted["contract"] == "Two year", "contract"] = "Month-to-month"
    drifted.loc[drifted.index % 3 == 0, "tenure"] //= 3
    # new customers, as the demo sends them: under v1's own ids every drifted row would
    # keep its valid/test split in the retraining (a row's split comes from its id)
    drifted = monitor_demo().as_new_customers(drifted, "customerid", "2026m12")
    env.drifted = env.root / "drifted.csv"
    drifted.to_csv(env.drifted, index=False)
    return env


def test_iid_current_data_is_not_flagged_and_nothing_retrains(env):
    before = env.run_folders()
    lines: list[str] = []
    manifest, retrained = env.monitor(env.iid, echo=lines.append)
    folder = Path(manifest.data["run_dir"])
    # the terminal: the drift verdict, then the decision
    drift = json.loads((folder / "drift.json").read_text())
    verdict = lines.index("monitor: no retraining")
    q = drift["quality"]
    est = drift["performance_estimate"]
    assert lines[verdict - 2 : verdict] == terminal.estimate_lines(est)
    assert lines[verdict - 6 : verdict - 2] == [
        f"drift:      0/{drift['n_columns']} columns drifted (0%)",
        "dataset:    no drift (threshold: 50% of columns)",
        f"prediction: no drift ({drift['prediction_drift']['method']} "
        f"{drift['prediction_drift']['score']:.4g}, mean score "
        f"{drift['prediction_drift']['reference_mean']:.3f} -> "
        f"{drift['prediction_drift']['current_mean']:.3f})",
        f"quality:    on {len(pd.read_csv(env.iid))} labelled rows: ROC AUC "
        f"{q['reference']['roc_auc']:.3f} -> "
        f"{q['current']['roc_auc']:.3f} ({q['delta']['roc_auc']:+.3f}), PR AUC "
        f"{q['reference']['pr_auc']:.3f} -> {q['current']['pr_auc']:.3f} "
        f"({q['delta']['pr_auc']:+.3f}), F1 {q['reference']['f1']:.3f} -> "
        f"{q['current']['f1']:.3f} ({q['delta']['f1']:+.3f}), recall "
        f"{q['reference']['recall']:.3f} -> {q['current']['recall']:.3f} "
        f"({q['delta']['recall']:+.3f})",
    ]
    assert retrained is None and env.run_folders() - before == {folder}
    assert folder.name.split("-")[-2] == "monitor"
    drift = json.loads((folder / "drift.json").read_text())
    assert drift["n_drifted"] == 0 and not drift["dataset_drift"]
    assert not drift["prediction_drift"]["drifted"]
    assert drift["model"]["version"] == env.champion()
    assert drift["reference"]["uri"] == str(env.source / "data" / "train.parquet")
    assert drift["current"] == {
        "kind": "file",
        "uri": str(env.iid),
        "rows": len(pd.read_csv(env.iid)),
        "labelled_rows": len(pd.read_csv(env.iid)),
    }
    assert abs(drift["quality"]["delta"]["roc_auc"]) < 0.03
    assert drift["decision"]["retrain"] is False
    assert manifest.data["actions"]["retrain"] == {"fired": False}
    # the label-free estimate, with the calibration the version shipped, next to the
    # realised metrics (all rows labelled here): same rows, no concept shift
    champion = env.client().get_model_version_by_alias("churn-classifier", "champion")
    assert est["calibration"]["source"] == f"runs:/{champion.run_id}/calibration.json"
    assert est["rows"] == drift["current"]["rows"] and est["method"] == "cbpe"
    lo, hi = est["roc_auc_ci"]
    assert (
        lo <= q["current"]["roc_auc"] <= hi and abs(est["roc_auc"] - q["current"]["roc_auc"]) < 0.03
    )
    assert est["roc_auc_delta"] == pytest.approx(est["roc_auc"] - q["reference"]["roc_auc"])
    side = est["realised"]
    assert side["realised"]["roc_auc"] == q["current"]["roc_auc"]
    assert not side["concept_shift_suspected"]
    monitor_run = env.client().search_runs(
        [env.client().get_run(manifest.data["mlflow"]["parent_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{manifest.data['mlflow']['parent_run_id']}'",
    )[0]
    logged = monitor_run.data.metrics
    assert logged["estimated_roc_auc"] == pytest.approx(est["roc_auc"])
    assert logged["estimate_error_roc_auc"] == pytest.approx(side["error"]["roc_auc"])
    assert logged["labelled_realised_roc_auc"] == pytest.approx(q["current"]["roc_auc"])
    assert "mlfolio_estimated_roc_auc" in (folder / "drift.prom").read_text()
    for name in (
        "08_monitor.ipynb",
        "08_monitor.html",
        "drift_report.html",
        "quality_report.html",
        "drift.prom",
        "index.html",
        "monitor.json",
    ):
        assert (folder / name).exists(), name
    assert "mlfolio_drift_share" in (folder / "drift.prom").read_text()
    index = (folder / "index.html").read_text()
    assert 'href="drift_report.html"' in index and "no dataset drift" in index
    assert 'id="performance-estimate"' in index and 'id="concept-shift"' not in index


def test_dry_run_decides_but_does_not_retrain(env):
    before, champion = env.run_folders(), env.champion()
    manifest, retrained = env.monitor(env.drifted, dry_run=True)
    assert retrained is None and len(env.run_folders() - before) == 1
    mon = manifest.data["monitor"]
    assert mon["decision"]["retrain"] is True
    assert {"tenure", "monthlycharges", "contract"} <= set(mon["drifted_columns"])
    assert mon["decision"]["reasons"][0].startswith("FIRE share of drifted columns")
    assert manifest.data["actions"]["retrain"] == {"fired": True, "run": False, "why": "--dry-run"}
    assert env.champion() == champion
    assert (
        "Retraining not started: --dry-run"
        in (Path(manifest.data["run_dir"]) / "index.html").read_text()
    )


def test_drift_retrains_and_only_a_better_model_is_promoted(env):
    # 1. Drift fires retraining; a logistic regression beats the 3-stump champion.
    old = env.champion()
    lines: list[str] = []
    monitor_m, retrain_m = env.monitor(env.drifted, echo=lines.append, **STRONG)
    mon_dir, re_dir = Path(monitor_m.data["run_dir"]), Path(retrain_m.data["run_dir"])
    act = monitor_m.data["actions"]["retrain"]
    assert act["run"] and act["status"] == "succeeded" and act["run_dir"] == str(re_dir)
    assert act["gate_passed"] is True and act["promoted"] is True
    assert env.champion() == act["version"] != old
    drifted = ", ".join(monitor_m.data["monitor"]["drifted_columns"])
    fires = lines.index("monitor: retraining fires")
    assert re.fullmatch(
        r"drift:      \d+/\d+ columns drifted \(\d+%\): " + re.escape(drifted), lines[fires - 6]
    ), lines[fires - 6]
    dataset = "DRIFT" if monitor_m.data["monitor"]["dataset_drift"] else "no drift"
    assert lines[fires - 5] == f"dataset:    {dataset} (threshold: 50% of columns)"
    # then the label-free estimate and, the drifted rows being labelled, how far off it was
    est = monitor_m.data["monitor"]["performance_estimate"]
    assert lines[fires - 2 : fires] == terminal.estimate_lines(est)
    assert abs(est["realised"]["error"]["roc_auc"]) < 0.05
    # the retraining run's own verdict: the new champion replaced the old one
    assert f"champion:   version {act['version']} (was version {old})" in lines
    # the retraining run knows why it ran, and the two index pages link to each other
    trigger = retrain_m.data["trigger"]
    assert trigger["monitor_run_dir"] == str(mon_dir) and trigger["champion_version"] == old
    assert any(r.startswith("FIRE") for r in trigger["reasons"])
    assert (re_dir / trigger["monitor_index"]).resolve() == mon_dir / "index.html"
    assert (mon_dir / act["index"]).resolve() == re_dir / "index.html"
    assert f'href="{act["index"]}"' in (mon_dir / "index.html").read_text()
    assert f'href="{trigger["monitor_index"]}"' in (re_dir / "index.html").read_text()
    # trained on the champion's rows plus the newly labelled ones (new customers: added)
    new_ids = pd.read_csv(env.drifted)["customerid"]
    retrain_rows = pd.read_parquet(trigger["data"])
    assert retrain_m.data["data"]["rows"] == len(retrain_rows) == 4000 + len(new_ids)
    assert retrain_rows["monthlycharges"].max() > pd.read_csv(CHURN_CSV)["monthlycharges"].max()
    parent = env.client().get_run(retrain_m.data["mlflow"]["parent_run_id"])
    assert parent.data.tags["mlfolio.trigger"] == "monitor"
    # The retraining run's test rows are customers champion v1 never trained, tuned or
    # chose a threshold on: rows keep their split when the monitor appends new ones.
    seen = pd.concat(
        [pd.read_parquet(env.source / "data" / f"{s}.parquet") for s in ("train", "valid")]
    )["customerid"]
    retrain_test = pd.read_parquet(re_dir / "data" / "test.parquet")["customerid"]
    # the drifted customers hash across all three splits: the retraining learns from them
    drifted_in = {
        s: int(pd.read_parquet(re_dir / "data" / f"{s}.parquet")["customerid"].isin(new_ids).sum())
        for s in ("train", "valid", "test")
    }
    assert all(n > 0 for n in drifted_in.values()), drifted_in
    assert sum(drifted_in.values()) == len(new_ids)
    assert drifted_in["train"] > len(new_ids) / 2, drifted_in
    leaked = int(retrain_test.isin(seen).sum())
    assert leaked == 0, f"{leaked} of {len(retrain_test)} test rows were in v1's train/valid"
    # evaluate knew it from v1's lineage (logged with the model) and recorded it
    ev = json.loads((re_dir / "evaluate.json").read_text())
    v1 = env.client().get_model_version("churn-classifier", old)
    assert ev["rows_unseen_by_champion"] == len(retrain_test)
    assert ev["champion_overlap"] == {
        "lineage": f"runs:/{v1.run_id}/lineage/seen_rows.parquet",
        "champion_seen_rows": len(seen),
        "test_rows": len(retrain_test),
        "found": 0,
        "excluded": 0,
        "remaining": 0,
    }
    # out-of-time: the newly labelled (drifted) customers in the test split, none seen by
    # v1 (new customers); they decide the gate
    assert trigger["new_rows"] == monitor_m.data["monitor"]["retrain_new_rows"]
    assert ev["recent_rows"]["rows"] == len(new_ids)
    recent = ev["row_sets"]["out_of_time"]
    assert recent["rows"] == ev["recent_rows"]["unseen_by_both"] == drifted_in["test"]
    assert ev["decided_by"] == "out_of_time" and ev["comparison"]["row_set"] == "out_of_time"
    assert ev["comparison"]["difference"] == pytest.approx(
        recent["candidate_roc_auc"] - recent["champion_roc_auc"]
    )
    assert (
        f"PASS compared with champion v{old} on {recent['rows']} out-of-time rows"
        in (retrain_m.data["gate"]["reasons"][1])
    )
    page = (re_dir / "index.html").read_text()
    assert (
        f"only on rows it never trained, tuned or chose its threshold on: {len(retrain_test)} "
        f"of the {len(retrain_test)} test rows (0 it had seen left out, 0 remain;" in page
    )
    assert 'id="row-set-out_of_time"' in page and "decides the gate" in page
    assert parent.data.tags["mlfolio.trigger_run_dir"] == str(mon_dir)

    # 2. Drift fires again; this time the candidate is the weak model: the gate refuses it.
    # With the old seeded split the retraining's test rows overlap the champion's
    # train/valid rows: evaluate leaves them out of the comparison and counts them.
    promoted = env.champion()
    monitor_m, retrain_m = env.monitor(env.drifted, **{"split.method": "seeded"})
    act = monitor_m.data["actions"]["retrain"]
    assert act["status"] == "succeeded" and act["gate_passed"] is False
    re_dir = Path(retrain_m.data["run_dir"])
    ev = json.loads((re_dir / "evaluate.json").read_text())
    tags = env.client().get_model_version("churn-classifier", promoted).tags
    v2_seen = pd.concat(
        [
            pd.read_parquet(Path(tags["mlfolio.run_dir"]) / "data" / f"{s}.parquet")
            for s in ("train", "valid")
        ]
    )["customerid"]
    seeded_test = pd.read_parquet(re_dir / "data" / "test.parquet")["customerid"]
    overlap = int(seeded_test.isin(v2_seen).sum())
    assert overlap > 0
    assert ev["champion_overlap"]["found"] == ev["champion_overlap"]["excluded"] == overlap
    assert ev["champion_overlap"]["remaining"] == 0
    assert ev["rows_unseen_by_champion"] == len(seeded_test) - overlap
    assert ev["row_sets"]["unseen_test"]["rows"] == len(seeded_test) - overlap
    assert ev["champion"]["test_rows"] == len(seeded_test) - overlap
    assert act["promoted"] is False and env.champion() == promoted
    assert retrain_m.data["gate"]["passed"] is False
    assert any(r.startswith("FAIL") for r in retrain_m.data["gate"]["reasons"])
    # the pages say the champion stays, not that the refused version was deployed, and the
    # kubernetes target says what it did: manifests written, nothing applied
    retrain_index = (Path(retrain_m.data["run_dir"]) / "index.html").read_text()
    assert f"No new champion; version {promoted} stays @champion." in retrain_index
    assert ">manifests written (not applied)</span>" in retrain_index  # kubernetes target
    monitor_index = (Path(monitor_m.data["run_dir"]) / "index.html").read_text()
    assert f"no new champion; version {promoted} stays @champion" in monitor_index


@pytest.mark.parametrize("case", ["missing column", "wrong type", "empty"])
def test_bad_current_data_fails_the_monitor_stage_naming_the_problem(env, case, capsys):
    df = pd.read_csv(env.iid)
    if case == "missing column":
        df = df.drop(columns=["contract"])
        expected = "contract"
    elif case == "wrong type":
        df["tenure"] = "twelve"
        expected = "tenure"
    else:
        df = df.head(0)
        expected = "no rows"
    bad = env.root / f"bad-{case.replace(' ', '-')}.csv"
    df.to_csv(bad, index=False)
    before = env.run_folders()
    code = cli.main(
        ["monitor", str(env.params), "--current", str(bad), "--runs-root", str(env.runs)]
    )
    err = capsys.readouterr().err
    assert code == 1 and "stage 'monitor' failed" in err and expected in err
    assert f"current data {bad}" in err
    (folder,) = env.run_folders() - before
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_stage"] == "monitor"
    assert (folder / "08_monitor.ipynb").exists() and (folder / "08_monitor.html").exists()


def test_monitor_without_current_data_is_a_parameter_error(env, capsys):
    before = env.run_folders()
    with pytest.raises(ConfigError, match="nothing to monitor: give --current FILE"):
        pipeline.monitor(env.params, runs_root=env.runs, **QUIET)
    assert cli.main(["monitor", str(env.params), "--runs-root", str(env.runs)]) == 2
    assert "monitoring.prediction_log" in capsys.readouterr().err
    assert env.run_folders() == before


def _retrained_monitor_run(env) -> Path:
    """A monitor run folder whose retraining ran (made by the test above, or here)."""
    for folder in sorted(env.runs.iterdir()):
        m = json.loads((folder / "manifest.json").read_text())
        if (m.get("actions") or {}).get("retrain", {}).get("run"):
            return folder
    return Path(env.monitor(env.drifted, **STRONG)[0].data["run_dir"])


def test_monitor_pages_in_a_browser(env):
    chromium = require_chromium()
    sync_api = require_module("playwright.sync_api", "the HTML pages are read in Chromium")
    folder = _retrained_monitor_run(env)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            went_out: list[str] = []  # offline: every page here must render without the web

            def offline(route: Any) -> None:
                if route.request.url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    went_out.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto((folder / "index.html").as_uri(), wait_until="load")
            verdict = page.inner_text("#monitor-verdict")
            assert "dataset drift" in verdict
            drift = json.loads((folder / "drift.json").read_text())
            counted = f"{drift['n_drifted']} of 19 feature columns"
            assert counted in verdict
            # Evidently's page counts the same columns (the score is tested apart)
            note = page.inner_text("#evidently-count")
            assert note.startswith(f"Evidently's drift report counts {counted} drifted"), note
            assert "on the same rows as the verdict above" in note
            assert page.inner_text("#retrain-decision") == "retraining fires"
            assert page.locator("#quality tr").count() > 5
            for href in page.eval_on_selector_all(
                "a[href]", "els => els.map(e => e.getAttribute('href'))"
            ):
                if "://" not in href:
                    assert (folder / href).resolve().exists(), href
            # follow the link to the retraining run, and its link back
            with page.expect_navigation(wait_until="load"):
                page.click("#retrain-link")
            assert "Retraining fired by the monitor run" in page.inner_text("#trigger")
            with page.expect_navigation(wait_until="load"):
                page.click("#trigger-link")
            assert page.url == (folder / "index.html").as_uri()
            # Evidently's report renders its drift table (JS, no network)
            page.goto((folder / "drift_report.html").as_uri(), wait_until="load")
            page.wait_for_function(
                "document.body.innerText.includes('monthlycharges')", timeout=30_000
            )
            assert "prediction" in page.inner_text("body")
            page.goto((folder / "08_monitor.html").as_uri(), wait_until="load")
            page.wait_for_function("[...document.images].every(i => i.complete)")
            assert (
                page.eval_on_selector_all(
                    "img", "els => els.filter(i => i.naturalWidth > 100).length"
                )
                >= 1
            )
            assert errors == []
            assert went_out == [], f"requests to the web: {went_out}"
        finally:
            browser.close()


def test_the_loop_through_a_served_prediction_log(env, tmp_path):
    """Serve champion and challenger (A/B, prediction log), send drifted traffic, let the
    outcomes arrive as a labels file, monitor the log: drift fires retraining (dry run),
    the A/B report compares the variants, and the server's /metrics shows the verdict."""
    from types import SimpleNamespace

    import httpx

    from .servers import start_server, stop_server, wait_for_rows

    log_dir = tmp_path / "log"
    server = start_server(
        SimpleNamespace(tracking_uri=env.uri),
        "--challenger",
        "models:/churn-classifier@challenger",
        "--challenger-weight",
        "0.5",
        "--prediction-log",
        str(log_dir),
        "--entity-column",
        "customerid",
        name="churn-classifier",
    )
    try:
        traffic = pd.read_csv(env.drifted)
        features = traffic.drop(columns=["churn"])
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for start in range(0, len(features), 40):
                chunk = features.iloc[start : start + 40]
                body = {
                    "dataframe_split": {
                        "columns": list(chunk.columns),
                        "data": chunk.astype(object).values.tolist(),
                    }
                }
                assert client.post("/invocations", json=body).status_code == 200
            wait_for_rows(log_dir, len(features), include_shadow=False, timeout=30)
            labels = tmp_path / "outcomes.csv"
            traffic[["customerid", "churn"]].to_csv(labels, index=False)

            lines: list[str] = []
            manifest, retrained = pipeline.monitor(
                env.params,
                {
                    "monitoring.prediction_log": str(log_dir),
                    "monitoring.labels": str(labels),
                    "monitoring.window_hours": 1,
                },
                dry_run=True,
                runs_root=env.runs,
                echo=lines.append,
            )
            folder = Path(manifest.data["run_dir"])
            drift = json.loads((folder / "drift.json").read_text())
            assert drift["current"]["kind"] == "prediction_log"
            assert drift["current"]["rows"] == drift["current"]["labelled_rows"] == len(traffic)
            assert set(drift["current"]["variants"]) == {"champion", "challenger"}
            assert {"monthlycharges", "contract"} <= set(drift["drifted_columns"])
            assert "seniorcitizen" not in drift["drifted_columns"]  # 0/1 read back as ints
            assert drift["decision"]["retrain"] and retrained is None
            assert manifest.data["stages"]["ab_report"]["status"] == "succeeded"
            ab = json.loads((folder / "ab.json").read_text())
            assert ab["design"] == "ab" and ab["window"]["labelled_rows"] == len(traffic)
            assert {v["variant"] for v in ab["variants"]} == {"champion", "challenger"}
            assert ab["recommendation"]["action"] in ("promote", "keep", "roll back")
            # the terminal: drift verdict, the decision, then the A/B recommendation
            fires = lines.index("monitor: retraining fires")
            assert fires < lines.index(terminal.ab_line(ab))
            assert lines[fires - 6].startswith("drift:      ")
            # the logged rows' estimate, on the server's own log (all labelled here)
            est = drift["performance_estimate"]
            assert est["rows"] == len(traffic) and est["realised"]["rows"] == len(traffic)
            assert lines[fires - 2].startswith("estimate:   ROC AUC ")
            # the server now exposes the verdict for alerting
            assert (
                json.loads((log_dir / "drift.json").read_text())["share_drifted"]
                == drift["share_drifted"]
            )
            metrics = client.get("/metrics").text
            share = re.search(r"^mlfolio_drift_share\{[^}]*\} (\S+)$", metrics, re.M)
            assert share and float(share.group(1)) == pytest.approx(drift["share_drifted"])
            # ... and the A/B report (ab.json beside the log) for the challenger alert
            assert json.loads((log_dir / "ab.json").read_text())["comparison"] == ab["comparison"]
            worse = re.search(r"^mlfolio_ab_challenger_worse\{[^}]*\} (\S+)$", metrics, re.M)
            assert worse and float(worse.group(1)) == (
                ab["recommendation"]["action"] == "roll back"
            )

            # The registry acts on the A/B recommendation when asked to (no retraining here).
            before = {a: _alias(env, a) for a in ("champion", "challenger")}
            manifest, _ = pipeline.monitor(
                env.params,
                {
                    "monitoring.prediction_log": str(log_dir),
                    "monitoring.labels": str(labels),
                    "monitoring.window_hours": 1,
                    "monitoring.ab.act": True,
                    "monitoring.retrain": {
                        "min_drift_share": None,
                        "on_dataset_drift": False,
                        "max_roc_auc_drop": None,
                    },
                },
                runs_root=env.runs,
                **QUIET,
            )
            action = manifest.data["ab"]["recommendation"]["action"]
            after = {a: _alias(env, a) for a in ("champion", "challenger")}
            assert manifest.data["actions"]["retrain"] == {"fired": False}
            if action == "keep":
                assert "ab" not in manifest.data["actions"] and after == before
            else:
                assert manifest.data["actions"]["ab"]["done"] is True
                assert after["challenger"] is None
                expected = before["challenger"] if action == "promote" else before["champion"]
                assert after["champion"] == expected
    finally:
        stop_server(server.proc)


def _alias(env, alias: str) -> str | None:
    try:
        return str(env.client().get_model_version_by_alias("churn-classifier", alias).version)
    except Exception:
        return None


def test_reference_data_comes_from_mlflow_when_the_run_folder_is_elsewhere(env):
    """A monitor on another machine (shared tracking server) cannot read the champion's
    run folder; the pipeline run's data/ artifacts carry the same rows."""
    tags = env.client().get_model_version("churn-classifier", env.champion()).tags
    source = Path(tags["mlfolio.run_dir"])
    moved = source.with_name(source.name + "-elsewhere")
    local, _ = env.monitor(env.iid, dry_run=True)
    source.rename(moved)
    try:
        remote, _ = env.monitor(env.iid, dry_run=True)
    finally:
        moved.rename(source)
    ours = json.loads((Path(local.data["run_dir"]) / "drift.json").read_text())
    theirs = json.loads((Path(remote.data["run_dir"]) / "drift.json").read_text())
    assert (
        theirs["reference"]["uri"] == f"runs:/{tags['mlfolio.pipeline_run_id']}/data/train.parquet"
    )
    assert theirs["reference"]["rows"] == ours["reference"]["rows"]
    assert theirs["columns"] == ours["columns"]
    assert theirs["quality"] == ours["quality"]


def test_two_monitors_on_one_trigger_start_one_retraining(env):
    """Two monitors saw the same drift at once: the one that claims second is held and
    says which monitor run already started the retraining. The race is driven, not slept:
    the other monitor's claim lands right after this one decided to retrain."""
    from datetime import UTC, datetime

    from mlfolio import registry

    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line == "monitor: retraining fires":  # the other monitor claims first
            ok, _ = registry.claim_retraining(
                "churn-classifier",
                "/runs/other-monitor",
                datetime.now(UTC),
                cooldown_hours=0,
                retrain_run_dir="/runs/other-retraining",
            )
            assert ok

    before, champion = env.run_folders(), env.champion()
    manifest, retrained = pipeline.monitor(
        env.params, {"monitoring.current": str(env.drifted)}, runs_root=env.runs, echo=echo
    )
    assert retrained is None and len(env.run_folders() - before) == 1
    act = manifest.data["actions"]["retrain"]
    assert act["fired"] is True and act["run"] is False
    assert act["why"].startswith("held: retraining already started by /runs/other-monitor")
    assert "/runs/other-retraining" in act["why"]
    assert any(line.startswith("retraining held: ") for line in lines)
    assert env.champion() == champion
    index = (Path(manifest.data["run_dir"]) / "index.html").read_text()
    assert "Retraining not started: held: retraining already started by" in index


def test_lineage_falls_back_to_the_run_folder_for_a_version_without_it(env):
    """A version logged before its seen rows were recorded (no lineage artifact): the
    rows it saw come from its run folder's train and valid splits, and the answer says
    so."""
    import mlflow
    import numpy as np

    from mlfolio import config, lineage, registry

    mlflow.set_tracking_uri(env.uri)
    mlflow.set_registry_uri(env.uri)
    schema = config.load(env.params).schema
    ref = registry.get_alias("churn-classifier", registry.CHAMPION)
    recorded = lineage.seen_by(ref, schema)
    assert recorded.source == f"runs:/{ref.run_id}/lineage/seen_rows.parquet"
    artifact = Path(
        mlflow.artifacts.download_artifacts(
            run_id=ref.run_id, artifact_path="lineage/seen_rows.parquet"
        )
    )
    store = Path(env.client().get_run(ref.run_id).info.artifact_uri.removeprefix("file://"))
    stored = store / "lineage" / "seen_rows.parquet"
    assert stored.is_file() and artifact.is_file()
    moved = stored.with_name("moved.parquet")
    stored.rename(moved)
    try:
        older = lineage.seen_by(ref, schema)
    finally:
        moved.rename(stored)
    run_dir = Path(
        env.client().get_model_version("churn-classifier", ref.version).tags["mlfolio.run_dir"]
    )
    assert older.source == f"run folder {run_dir / 'data'}/{{train,valid}}.parquet"
    assert np.array_equal(older.keys, recorded.keys)


def test_a_version_without_a_shipped_calibration_is_calibrated_by_the_monitor(env):
    """A version evaluated before calibrations were shipped: the monitor fits one on the
    version's validation rows (its run folder) and says where it came from."""
    ref = env.client().get_model_version_by_alias("churn-classifier", "champion")
    store = Path(env.client().get_run(ref.run_id).info.artifact_uri.removeprefix("file://"))
    shipped = store / "calibration.json"
    assert shipped.is_file()
    moved = shipped.with_name("moved.json")
    shipped.rename(moved)
    try:
        manifest, _ = env.monitor(env.iid, dry_run=True)
    finally:
        moved.rename(shipped)
    drift = json.loads((Path(manifest.data["run_dir"]) / "drift.json").read_text())
    source = drift["performance_estimate"]["calibration"]["source"]
    run_dir = env.client().get_model_version("churn-classifier", ref.version).tags
    assert source == (
        f"fitted by this monitor run on {run_dir['mlfolio.run_dir']}/data/valid.parquet "
        f"(none shipped with models:/churn-classifier/{ref.version})"
    )
    assert drift["performance_estimate"]["roc_auc_ci"][0] < drift["quality"]["current"]["roc_auc"]
