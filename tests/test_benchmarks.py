"""Every benchmark runs at a tiny size and prints its table (the figures are not checked:
timings belong to the benchmarks, never to tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import ROOT, load_script, require_program

BENCHMARKS = ROOT / "benchmarks"


def header_row(table: str) -> int:
    return next(i for i, line in enumerate(table.splitlines()) if line.startswith("| stage"))


def run_benchmark(script: str, *args: str, timeout: float = 300) -> str:
    """Run ``benchmarks/<script>`` with this interpreter; its stdout (fails on exit != 0)."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_scale_bench_writes_its_table_and_plot(tmp_path):
    out = run_benchmark(
        "scale_bench.py",
        "--sizes",
        "1000",
        "--trials",
        "2",
        "--out",
        str(tmp_path / "results"),
        "--data-dir",
        str(tmp_path / "data"),
    )
    table = (tmp_path / "results" / "scale.md").read_text()
    assert table in out.replace("\r", "")
    assert "1,000 rows |" in table.splitlines()[header_row(table)]
    for stage in ("ingest", "preprocess", "train", "tune", "evaluate", "register", "deploy"):
        assert f"| {stage:<22}|" in table, stage
    assert "| whole run" in table and "| all processes (peak)" in table
    assert "2 trials at 1,000" in table and "load average" in table
    assert "the best refit's boosting rounds: 1,000: " in table
    assert re.search(r"CPU seconds per stage .*: 1,000: ingest \d+", table)
    png = tmp_path / "results" / "scale.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tune_bench_quick_prints_its_table_and_result_line():
    out = run_benchmark("tune_bench.py", "--quick")
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("seed method"))
    assert "to target s" in lines[header] and "AUC @ equal s" in lines[header]
    rival, ours = lines[header + 2], lines[header + 3]
    assert "RandomizedSearchCV n_jobs=2" in rival and "mlfolio tune" in ours
    assert "load average" in out and "pruner=median" in out
    prefix = "median speed-up to target vs RandomizedSearchCV n_jobs=2: "
    assert lines[-1].startswith(prefix) and lines[-1].endswith("x")
    float(lines[-1].removeprefix(prefix).removesuffix("x"))  # a number


@pytest.mark.slow
def test_pipeline_bench_runs_its_cold_kernel_variant():
    """The plain-papermill variant (a kernel started per stage) runs to the end: it once
    failed in deploy with FileNotFoundError on runs/<run>/logs/serve-local.log. (The warm
    variant is ``mlfolio run`` itself, which the pipeline tests run end to end.)"""
    out = run_benchmark(
        "pipeline_bench.py",
        "--no-warm",
        "-p",
        "data.sample_rows=600",
        "-p",
        "tuning.enabled=false",
        "-p",
        "training.models=[logreg]",
        "-p",
        "gate.min_roc_auc=0",
        "-p",
        "evaluation.explain_rows=200",
        "-p",
        "deploy.targets=[local]",
    )
    assert "cold kernels (plain papermill): whole run" in out
    assert "warm kernels" not in out
    table = out.split("cold kernels (plain papermill): whole run")[1]
    assert "stage" in table and "overhead s" in table
    for stage in ("ingest", "evaluate", "deploy", "mean"):
        assert f"\n{stage}" in table, stage


@pytest.mark.slow
def test_drift_bench_compares_with_evidently_at_a_tiny_size():
    out = run_benchmark("drift_bench.py", "--rows", "3000")
    assert "mlfolio drift_verdict" in out and "Evidently Report" in out
    assert "ours / Evidently time:" in out
    assert "expected drift found by ours:" in out


@pytest.mark.slow
def test_ab_bench_reads_both_tests_at_every_peek_at_a_tiny_size():
    out = run_benchmark("ab_bench.py", "--sims", "40", "--max-rows", "400", "--chunk", "20")
    for design in ("ab", "shadow"):
        for scenario in ("A/A", "true difference"):
            assert re.search(rf"^{design} +{re.escape(scenario)} +mSPRT", out, re.M), out
            assert re.search(rf"^{design} +{re.escape(scenario)} +DeLong", out, re.M), out
    assert "load average" in out
    assert re.search(
        r"sequential test false positive rate under peeking: \d\.\d+ "
        r"\(fixed-horizon DeLong read the same way: \d\.\d+\)$",
        out.strip(),
    )


@pytest.mark.slow
def test_serve_bench_prints_the_headline_and_the_single_row_and_batch_tables():
    require_program("wrk", "the load generator of serve_bench.py")
    # --baseline-src: this checkout again, as the 'before' of a before/after table
    # --estimator xgboost: the default experiment's model, scored through its trees as arrays
    out = run_benchmark(
        "serve_bench.py",
        "--quick",
        "--baseline-src",
        str(ROOT),
        "--asgi-noop",
        "--estimator",
        "xgboost",
    )
    assert re.search(r"^machine: \d+ cores, load average [\d. ]+ before", out, re.M)
    assert "| repeat | no-op req/s | no-op p99 ms | mlfolio req/s | mlfolio p99 ms |" in out
    assert re.search(r"^\| 1 \| \d+ \| [\d.]+ \| \d+ \| [\d.]+ \| \d+% \|", out, re.M)
    assert re.search(
        r"^headline: mlfolio serve at \d+% of the no-op app's req/s, p99 [\d.]+ ms at 10 clients",
        out,
        re.M,
    )
    for server in ("mlfolio", "mlflow"):
        assert re.search(rf"^\| {server} \| 10 \| \d+ \|", out, re.M), server  # single rows
        for rows in (100, 1000):
            assert re.search(rf"^\| {server} \| {rows} \| [\d.]+ \| \d+ \|", out, re.M), rows
    assert "non-200 answers" not in out
    assert "| repeat | before req/s | after req/s |" in out
    assert re.search(r"^\| 1 \| \d+ \| \d+ \| [\d.]+ \| [\d.]+ \| \d+ \| \d+ \| \d+ \|$", out, re.M)
    assert re.search(r"^after vs before: req/s [+-][\d.]+% \(median\)", out, re.M)
    assert "| repeat | ASGI no-op req/s | ASGI no-op p99 ms | mlfolio req/s |" in out
    assert re.search(r"^\| 1 \| \d+ \| [\d.]+ \| \d+ \| \d+% \| \d+ / \d+ / \d+ \|$", out, re.M)
    assert re.search(r"^mlfolio serve at \d+% of the bare ASGI no-op's req/s", out, re.M)


class _SlowHandler(BaseHTTPRequestHandler):
    """Answers every POST after 1.2 s: wrk then prints its latencies in seconds."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (the http.server hook's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(1.2)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # wrk drops its connections with requests in flight when its time is up


def test_serve_bench_reads_wrk_latencies_of_a_second_and_more(tmp_path):
    # CI once failed here: wrk pads "1.23s" with a space, and the text parser found no p99
    require_program("wrk", "the load generator of serve_bench.py")
    server = _QuietServer(("127.0.0.1", 0), _SlowHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        bodies = tmp_path / "bodies.jsonl"
        bodies.write_text('{"a": 1}\n')
        url = f"http://127.0.0.1:{server.server_address[1]}/invocations"
        serve_bench = load_script(BENCHMARKS / "serve_bench.py")
        res = serve_bench.wrk_load(url, bodies, clients=2, duration=3)
    finally:
        server.shutdown()
        server.server_close()
    assert res["requests"] >= 2 and res["errors"] == 0
    assert 1150 <= res["p50_ms"] <= res["p99_ms"] < 2000
    assert 0 < res["rps"] < 2.5


@pytest.mark.slow
def test_spot_bench_quick_prints_its_table_and_both_numbers():
    out = run_benchmark("spot_bench.py", "--quick", "--trials", "6")
    assert "attempt 1, SIGTERM" in out and "attempt 2, restart" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("re-run trials: 0;")  # the script exits 1 on any re-run
    assert "SageMaker's savings figure" in last and "load average" in out


@pytest.mark.slow
def test_xgboost_threads_prints_every_setup_and_finds_the_same_trees(tmp_path):
    out = run_benchmark(
        "xgboost_threads.py", "--rows", "3000", "--rounds", "5", "--data-dir", str(tmp_path)
    )
    rows = [line for line in out.splitlines() if line.startswith("|     3,000 |")]
    assert len(rows) == 6  # 3 setups, idle and beside a busy process
    assert sum("all cores, sleeping" in r for r in rows) == 2
    assert "trees equal to the 1-thread fit's in every setup: yes" in out
