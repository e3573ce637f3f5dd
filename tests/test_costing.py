"""A run folder priced (mlfolio.pipeline.costing): the stages as the manifest measured
them, the prediction log's traffic, and ``mlfolio cost PARAMS|RUN_DIR``. The real run's
cost.json, index section and command are checked in test_report.py (on its run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlfolio import cli, cost, predlog
from mlfolio.errors import ConfigError
from mlfolio.files import write_json
from mlfolio.pipeline import costing
from mlfolio.serve import Column

TABLE = cost.load()
M5 = TABLE.training["ml.m5.large"].usd_per_hour  # 0.115 $/h


def manifest(**stages) -> dict:
    return {
        "experiment": "churn",
        "parameters": {
            "tuning": {"n_workers": 2},
            "sagemaker": {
                "instance_type": "ml.m5.xlarge",
                "instance_types": {"tune": "ml.c5.2xlarge"},
            },
            "deploy": {"sagemaker": {"instance_type": "ml.m5.large"}},
        },
        "stages": stages,
    }


RAN = {"status": "succeeded", "duration_s": 36.0, "cpu_s": 30.0, "peak_rss_mb": 500.0}


def test_stages_that_ran_are_priced_reused_and_unrun_ones_are_not():
    doc = costing.stage_costs(
        manifest(
            ingest={**RAN},
            train={**RAN, "reused_from": {"run_dir": "/runs/earlier"}},
            tune={**RAN, "cpu_s": 72.0, "peak_rss_mb": 3000.0},
            deploy={"status": "not run"},
        ),
        TABLE,
    )
    rows = {r["stage"]: r for r in doc["stages"]}
    assert set(rows) == {"ingest", "tune"}
    assert "reused" in doc["not_priced"]["train"] and "not run" in doc["not_priced"]["deploy"]
    # ingest: 1 vCPU, 0.6 GiB -> ml.m5.large, 36 s x 0.115 $/h = $0.00115
    assert rows["ingest"]["instance"] == "ml.m5.large"
    assert rows["ingest"]["on_demand_usd"] == pytest.approx(M5 * 36 / 3600)
    assert rows["ingest"]["spot_usd"] == pytest.approx(M5 * 36 / 3600 * 0.3)
    # tune: 2 vCPUs, two workers of 3000 MB x 1.25 = 7.3 GiB -> still ml.m5.large (8 GiB)
    assert (rows["tune"]["vcpus_needed"], rows["tune"]["instance"]) == (2, "ml.m5.large")
    # the configured instance types, per stage
    assert rows["ingest"]["configured"]["instance"] == "ml.m5.xlarge"
    assert rows["tune"]["configured"]["on_demand_usd"] == pytest.approx(0.408 * 36 / 3600)
    assert doc["total"]["on_demand_usd"] == pytest.approx(2 * M5 * 36 / 3600)
    assert doc["total"]["cpu_s"] == pytest.approx(102.0)


def test_a_run_measured_before_cpu_time_was_recorded_is_priced_on_one_vcpu():
    old = {k: v for k, v in RAN.items() if k != "cpu_s"}
    (row,) = costing.stage_costs(manifest(ingest=old), TABLE)["stages"]
    assert row["vcpus_needed"] == 1 and "not recorded" in row["note"]


COLUMNS = [Column("tenure", "long")]


def test_the_traffic_is_the_prediction_logs(tmp_path):
    log_dir = tmp_path / "log"
    with predlog.PredictionLog(log_dir, COLUMNS) as log:
        for i in range(10):  # 10 requests of 3 rows, 6 s apart, plus a shadow copy each
            for shadow in (False, True):
                log.append(
                    {"tenure": [1, 2, 3]},
                    np.array([0.1, 0.2, 0.3]),
                    request_id=f"r{i}",
                    model_name="m",
                    model_version="1",
                    variant="challenger" if shadow else "champion",
                    threshold=0.5,
                    shadow=shadow,
                    ts=1000.0 + 6 * i,
                )
    assert predlog.request_times(log_dir) == [1000.0 + 6 * i for i in range(10)]
    params = {"monitoring": {"prediction_log": str(log_dir)}, "deploy": {}}
    serving = costing.default_serving(params, duration_ms=4.0)
    assert serving.traffic_source == f"prediction log {log_dir}"
    # 10 requests over 54 s; no second with more than one
    assert serving.traffic.requests == 10 and serving.traffic.mean_rps == pytest.approx(10 / 54)
    assert serving.traffic.peak_rps == 1.0 and serving.duration_source.startswith("command")
    priced = costing.serving_costs(TABLE, params, serving)["priced"]
    assert [row["rps"] for row in priced] == [pytest.approx(10 / 54)]
    # no log: the reference rates; a rate given: that one
    assert costing.default_serving({}).traffic is None
    assert costing.default_serving(params, rps=3.0).traffic.mean_rps == 3.0
    with pytest.raises(ConfigError, match="--rps -1"):
        costing.default_serving({}, rps=-1)
    with pytest.raises(ConfigError, match="--duration-ms 0"):
        costing.default_serving({}, duration_ms=0)
    with pytest.raises(ConfigError, match="--memory-mb -5"):
        costing.default_serving({}, memory_mb=-5)


def test_the_servers_memory_the_deploy_stage_measured_is_used():
    """deploy.sagemaker.serverless memory_mb auto measured mlfolio serve's peak: priced at
    that (unless --memory-mb says otherwise)."""
    sizing = {"measured_peak_rss_mb": 2000.0, "memory_mb": 3072}
    m = {**manifest(), "deploy": {"targets": {"sagemaker": {"serverless_sizing": sizing}}}}
    serving = costing.default_serving(m["parameters"], manifest=m)
    assert (serving.memory_mb, serving.memory_source) == (2000.0, serving.memory_source)
    assert serving.memory_source.startswith("measured by deploy")
    options = costing.serving_costs(TABLE, m["parameters"], serving)["priced"][0]["options"]
    assert options[-2]["detail"] == "3072 MB"  # 2000 MB + 25%, as deploy chose
    assert costing.default_serving({}, memory_mb=700.0, manifest=m).memory_mb == 700.0
    assert costing.default_serving({}).memory_source == "assumed"


def test_break_even_says_when_one_instance_cannot_carry_it():
    serving = costing.Serving(None, "none", 10.0, "assumed", 800.0, "assumed")
    doc = costing.serving_costs(
        TABLE, {"deploy": {"sagemaker": {"instance_type": "ml.m5.large"}}}, serving
    )
    cheapest, configured = doc["break_even"]["cheapest"], doc["break_even"]["configured"]
    assert cheapest["instance"] == "ml.t2.medium" and configured["instance"] == "ml.m5.large"
    # 10 ms requests: a burstable ml.t2.medium sustains 0.4 of a core: 28 req/s at 70%;
    # it pays off against serverless at 77.8 req/s and against Lambda at 34.1 (test_cost):
    # more than it carries -> none; an ml.m5.large (a whole core: 70 req/s) pays off
    # against Lambda at 70.2 req/s: just more than it carries, too
    assert cheapest["capacity_rps"] == pytest.approx(28.0)
    assert cheapest["serverless_rps"] is None and cheapest["lambda_rps"] is None
    assert cheapest["serverless_rps_unbounded"] == pytest.approx(77.78, 1e-3)
    assert cheapest["lambda_rps_unbounded"] == pytest.approx(34.12, 1e-3)
    assert configured["capacity_rps"] == pytest.approx(70.0)
    assert configured["lambda_rps_unbounded"] == pytest.approx(70.06, 1e-3)
    # 2 ms requests on ml.m5.large: it carries 350 req/s, and pays off against Lambda below
    fast = costing.break_even(TABLE, "ml.m5.large", TABLE.realtime["ml.m5.large"], 0.002, 1024)
    assert fast["capacity_rps"] == pytest.approx(350.0)
    assert fast["lambda_rps"] == pytest.approx(
        83.95 / (2.628e6 * (0.002 * 1769 / 1024 * 0.0000166667 + 0.0000002 - 3.2e-8))
    )
    assert [row["rps"] for row in doc["priced"]] == list(costing.REFERENCE_RPS)
    assert len(doc["priced"][0]["options"]) == 4  # two endpoints, serverless, lambda


def _run_folder(tmp_path, **stages):
    run_dir = tmp_path / "20261206T000000Z-churn-abc123"
    run_dir.mkdir(parents=True)
    write_json(run_dir / "manifest.json", {**manifest(**stages), "kind": "training"})
    return run_dir


def test_cost_command_on_a_run_folder_prints_the_table(tmp_path, capsys):
    run_dir = _run_folder(tmp_path, ingest=RAN, tune={**RAN, "duration_s": 72.0})
    assert cli.main(["cost", str(run_dir), "--rps", "2", "--duration-ms", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"what {run_dir.name} costs on AWS (us-east-1")
    ingest = next(line for line in out if line.startswith("ingest"))
    assert "ml.m5.large" in ingest and "$0.001150" in ingest  # 36 s x 0.115 $/h
    assert any(line.startswith("total") and "$0.003450" in line for line in out)
    assert any("break-even vs serverless" in line for line in out)
    assert cli.main(["cost", str(run_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prices"]["published"] == TABLE.as_published
    assert doc["serving"]["duration_source"] == "assumed"


def test_cost_command_on_parameters_without_a_run_prices_serving_only(
    tmp_path, write_params, monkeypatch, capsys
):
    monkeypatch.setenv("MLFOLIO_PROJECT_DIR", str(tmp_path))
    params = write_params()
    assert cli.main(["cost", str(params), "-p", "deploy.sagemaker.instance_type=ml.c5.large"]) == 0
    out = capsys.readouterr().out
    assert "(no run of churn yet)" in out and "1 x ml.c5.large" in out
    # with a run of the experiment under runs/: its stages
    _run_folder(tmp_path / "runs", ingest=RAN)
    assert cli.main(["cost", str(params)]) == 0
    assert "\ningest " in capsys.readouterr().out


def test_cost_command_refuses_what_it_cannot_price(tmp_path, capsys):
    assert cli.main(["cost", str(tmp_path)]) == 2  # a folder without a manifest
    assert "no manifest.json" in capsys.readouterr().err
    run_dir = _run_folder(tmp_path / "r", ingest=RAN)
    assert cli.main(["cost", str(run_dir), "-p", "seed=1"]) == 2
    bad = tmp_path / "prices.yaml"
    bad.write_text("region: [")
    assert cli.main(["cost", str(run_dir), "--prices", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_write_never_fails_the_run(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    broken = {"parameters": {"tuning": {"n_workers": "many"}}, "stages": {"x": RAN}}
    assert costing.write(run_dir, broken) is None
    assert "no cost.json" in caplog.text and not (run_dir / "cost.json").exists()
    assert costing.write(run_dir, manifest(ingest=RAN)) == run_dir / "cost.json"
    assert json.loads((run_dir / "cost.json").read_text())["stages"][0]["stage"] == "ingest"
