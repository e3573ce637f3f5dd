"""``mlfolio serve`` against the HTTP stack alone and against ``mlflow models serve``.

Trains the logistic-regression baseline on data/telco_churn.csv, registers it as
``models:/serve-bench@champion`` in a temporary SQLite store (or takes ``--model`` and
``--tracking-uri``), and puts closed-loop load on servers on 127.0.0.1 with wrk (Debian's
``wrk``: 1 thread, N keep-alive connections, the Telco rows' ``dataframe_split`` bodies in
turn; ``--load asyncio``: benchmarks/loadgen.py instead, whose clients send in lockstep
bursts that micro-batching folds together). The load generator's own CPU is reported.
Before the load it checks that every server gives mlfolio's predictions for the same rows.

1. Headline: 1-row requests, ``--clients`` (10): a no-op FastAPI app (benchmarks/noop_app.py,
   started through ``mlfolio.serve.server.run_uvicorn``: the same uvicorn options and process
   settings) and ``mlfolio serve``, both up, loaded in turn ``--repeats`` times. Reported:
   mlfolio's req/s as a % of the no-op's, its p99, and each server's CPU per request (the
   steadier figure when other processes share the cores: their CPU is shown too).
   ``--asgi-noop``: a bare ASGI no-op app (uvicorn alone, no framework) joins them, for a
   second ratio: mlfolio's ``POST /invocations`` skips FastAPI's layers, which the no-op
   FastAPI app pays (``mlfolio.serve.app.ServingApp``).
2. 1-row requests at each ``--concurrency`` level, then ``--batch-rows`` rows per request
   (rows/s), for mlfolio and each of ``--variants`` (default ``mlflow``).

    .venv/bin/python benchmarks/serve_bench.py                  # ~4 min
    .venv/bin/python benchmarks/serve_bench.py --variants mlfolio --batch-rows "" \\
        --concurrency 10 --repeats 5                             # the headline only, ~2 min
    .venv/bin/python benchmarks/serve_bench.py --quick          # smoke run (figures meaningless)
    .venv/bin/python benchmarks/serve_bench.py --estimator xgboost  # the default experiment's model
    git worktree add --detach ../before 51b935d                 # a before/after table:
    .venv/bin/python benchmarks/serve_bench.py --variants mlfolio --batch-rows "" \\
        --concurrency 10 --repeats 5 --baseline-src ../before

Variants: ``mlflow`` (``mlflow models serve --env-manager local``, 1 worker, its default),
``mlfolio`` (default: compiled features + micro-batching; always run), ``mlfolio-pipeline``
(``--scorer pipeline``: the sklearn pipeline + micro-batching) and
``mlfolio-pipeline-unbatched`` (``--scorer pipeline --max-batch-rows 1``),
``mlfolio-log`` (``--prediction-log`` in a temporary folder: every row written to SQLite)
and ``mlfolio-ab-log`` (a challenger — a second version of the model — with
``--challenger-weight 0.5``, plus the prediction log). Each log variant reports the rows
its log holds at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LOADGEN = Path(__file__).with_name("loadgen.py")  # the load generator, run as a process
NOOP = "no-op"  # the no-op FastAPI app (noop_app.py); always run, not one of --variants
NOOP_ASGI = "no-op-asgi"  # --asgi-noop: noop_app.py --asgi, uvicorn with no framework
BASE = "mlfolio-base"  # --baseline-src: mlfolio serve from another checkout's lib/
VARIANTS = {
    "mlflow": None,
    "mlfolio": [],
    "mlfolio-pipeline": ["--scorer", "pipeline"],
    "mlfolio-pipeline-unbatched": ["--scorer", "pipeline", "--max-batch-rows", "1"],
    "mlfolio-log": ["--prediction-log", "{log}"],
    "mlfolio-ab-log": [
        "--challenger",
        "{challenger}",
        "--challenger-weight",
        "0.5",
        "--prediction-log",
        "{log}",
    ],
}


# -- setup -----------------------------------------------------------------------------
def register_model(tracking_uri: str, artifacts: Path, estimator: str = "logreg") -> str:
    """Fit ``estimator`` on the Telco file and register it as serve-bench@champion: the
    logreg baseline, or ``xgboost`` with parameters/churn.yaml's settings (the model the
    default experiment tunes and promotes)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from mlfolio import config, data, features, registry, tracking, train

    cfg = config.load(ROOT / "parameters" / "churn.yaml")
    cfg = cfg.model_copy(
        update={
            "tracking": cfg.tracking.model_copy(
                update={"tracking_uri": tracking_uri, "artifact_location": artifacts.as_uri()}
            )
        }
    )
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    X, y = features.xy(df, cfg.schema)
    first = (
        train.make_estimator("xgboost", cfg.training.xgboost, cfg.seed)
        if estimator == "xgboost"
        else LogisticRegression(C=1.0, max_iter=2000)
    )
    model = features.build_model_pipeline(cfg.schema, first)
    model.fit(X, y)
    tracking.configure(cfg)
    with mlflow.start_run(run_name="serve-bench") as run:
        uri = tracking.log_model(model, X)
    ref = registry.register(
        "serve-bench",
        uri,
        run.info.run_id,
        {"mlfolio.threshold": "0.350000", "mlfolio.data_hash": "bench"},
    )
    registry.set_alias(ref, registry.CHAMPION, "serve benchmark")
    # A second version (other regularisation) as the challenger of the A/B variant.
    challenger = features.build_model_pipeline(cfg.schema, LogisticRegression(C=0.1, max_iter=2000))
    challenger.fit(X, y)
    with mlflow.start_run(run_name="serve-bench-challenger") as run:
        uri = tracking.log_model(challenger, X)
    ref = registry.register(
        "serve-bench",
        uri,
        run.info.run_id,
        {"mlfolio.threshold": "0.400000", "mlfolio.data_hash": "bench"},
    )
    registry.set_alias(ref, registry.CHALLENGER, "serve benchmark")
    return "models:/serve-bench@champion"


def request_bodies(n: int, rows: int = 1) -> list[str]:
    """``n`` dataframe_split bodies of ``rows`` Telco rows each, the rows taken in turn
    (the file wraps around)."""
    import pandas as pd

    from mlfolio import config

    schema = config.load(ROOT / "parameters" / "churn.yaml").schema
    df = pd.read_csv(ROOT / "data" / "telco_churn.csv").drop(columns=["customerid", "churn"])
    # Numbers as a client holds them: a blank total is a missing value (JSON null), which
    # both servers take in a double column (MLflow refuses the text " " there).
    df[schema.numeric] = df[schema.numeric].apply(pd.to_numeric, errors="coerce")
    values = [
        [None if isinstance(v, float) and v != v else v for v in row]
        for row in df.itertuples(index=False, name=None)
    ]
    columns = list(df.columns)
    bodies = []
    for k in range(n):
        data = [values[(k * rows + j) % len(values)] for j in range(rows)]
        split = {"columns": columns, "data": data}
        bodies.append(json.dumps({"dataframe_split": split}, default=_plain))
    return bodies


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    variant: str, model_uri: str, tracking_uri: str, logs: Path, src: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """Start one variant; ``{log}`` in its arguments becomes ``logs/<variant>-predlog``;
    ``src``: a checkout whose ``lib/`` is imported instead of this one's (same venv)."""
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if src is not None:
        env["PYTHONPATH"] = str(src / "lib")
    if variant in (NOOP, NOOP_ASGI):
        cmd = [sys.executable, str(Path(__file__).with_name("noop_app.py")), "--port", str(port)]
        cmd += ["--asgi"] if variant == NOOP_ASGI else []
    elif VARIANTS.get(variant, []) is None:
        cmd = [
            str(VENV_BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
    else:
        challenger = model_uri.rpartition("@")[0] + "@challenger"
        extra = [
            a.format(log=logs / f"{variant}-predlog", challenger=challenger)
            for a in VARIANTS.get(variant, [])
        ]
        cmd = [
            sys.executable,
            "-m",
            "mlfolio.cli",
            "serve",
            "--model",
            model_uri,
            "--port",
            str(port),
            "--tracking-uri",
            tracking_uri,
            *extra,
        ]
    log_file = open(logs / f"{variant}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, timeout: float, log: Path) -> float:
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"server not ready after {timeout:.0f}s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def predictions(url: str, bodies: list[str]) -> list[list[float]]:
    import httpx

    out = []
    with httpx.Client(timeout=30) as client:
        for body in bodies:
            resp = client.post(
                f"{url}/invocations", content=body, headers={"Content-Type": "application/json"}
            )
            resp.raise_for_status()
            out.extend(resp.json()["predictions"])
    return out


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU time of the processes in group ``pgid`` (Linux /proc), else None:
    ``mlflow models serve`` scores in a uvicorn child of the process we start."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (/proc/stat), else None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# wrk sends the bodies of a .jsonl file in turn, one per request, on keep-alive connections.
# Its done() hook prints the figures as numbers (latencies in µs): wrk's own text pads and
# truncates them ("1.23s " for a second and more), so it is not parsed.
WRK_SCRIPT = """
local bodies, i = {}, 0
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json"}
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("%s %.0f %.0f %.0f %.0f %.1f %.1f\\n", WRK_TAG, summary.requests,
    summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""
WRK_TAG = "mlfolio-wrk-summary"


def read_wrk_summary(out: str) -> dict:
    """req/s, p50/p99 (ms), errors (socket errors, timeouts and non-2xx/3xx answers) and
    requests from the line WRK_SCRIPT's done() hook printed."""
    match = re.search(rf"^{WRK_TAG} (.+)$", out, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no {WRK_TAG!r} line:\n{out}")
    requests, duration_us, socket_errors, non2xx, p50_us, p99_us = map(
        float, match.group(1).split()
    )
    return {
        "rps": requests / (duration_us / 1e6),
        "p50_ms": p50_us / 1e3,
        "p99_ms": p99_us / 1e3,
        "errors": int(socket_errors + non2xx),
        "requests": int(requests),
    }


def wrk_load(url: str, bodies_file: Path, clients: int, duration: float) -> dict:
    """One wrk run (1 thread, ``clients`` connections): req/s, p50/p99, errors,
    requests and the CPU wrk itself used (a share of one core)."""
    script = bodies_file.with_suffix(".lua")
    script.write_text(WRK_SCRIPT.replace("WRK_TAG", json.dumps(WRK_TAG)))
    cmd = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(duration))}s", "-s", str(script), url]
    before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    out = subprocess.run(
        cmd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "BODIES": str(bodies_file)},
    ).stdout
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.time() - wall
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {**read_wrk_summary(out), "client_cpu": cpu / wall}


def run_load(
    server: Server,
    bodies_file: Path,
    rows: int,
    clients: int,
    duration: float,
    warmup: float,
    load: str = "wrk",
) -> dict:
    """One closed-loop load from a fresh load-generator process (wrk, or the asyncio
    client), with the server's CPU per request and the CPU other processes took meanwhile
    (the machine is shared)."""
    url = f"{server.url}/invocations"
    if load == "wrk":
        wrk_load(url, bodies_file, clients, warmup)  # warm-up, not measured
        cpu_before, busy_before, wall = group_cpu_seconds(server.pgid), busy_seconds(), time.time()
        res = wrk_load(url, bodies_file, clients, duration)
        cpu_after, busy_after = group_cpu_seconds(server.pgid), busy_seconds()
        wall = time.time() - wall
        served = res["requests"]
    else:
        cmd = [
            sys.executable,
            str(LOADGEN),
            "--url",
            url,
            "--bodies",
            str(bodies_file),
            "--clients",
            str(clients),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
        ]
        cpu_before, busy_before, wall = group_cpu_seconds(server.pgid), busy_seconds(), time.time()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        cpu_after, busy_after = group_cpu_seconds(server.pgid), busy_seconds()
        wall = time.time() - wall
        res = json.loads(out.stdout.strip().splitlines()[-1])
        # warm-up included on both sides of the ratio
        served = res["requests"] * (duration + warmup) / duration
    res["rows"] = rows
    res["rows_per_s"] = res["rps"] * rows
    # Server CPU per request: steadier than req/s when other processes share the cores.
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    res["cpu_us"] = None if server_cpu is None or not served else server_cpu / served * 1e6
    res["server_cpu"] = None if server_cpu is None else server_cpu / wall
    # Busy CPU of the whole machine not spent by this server or its load generator, in cores.
    res["others"] = (
        None
        if server_cpu is None or busy_before is None or busy_after is None
        else max(0.0, (busy_after - busy_before - server_cpu) / wall - res["client_cpu"])
    )
    return res


@dataclass(eq=False)
class Server:
    variant: str
    proc: subprocess.Popen
    url: str

    @property
    def pgid(self) -> int:
        return self.proc.pid  # started in its own session: the group's leader


def start(
    variant: str, model_uri: str, tracking_uri: str, logs: Path, src: Path | None = None
) -> Server:
    proc, url = start_server(variant, model_uri, tracking_uri, logs, src)
    server = Server(variant, proc, url)
    try:
        ready = wait_ready(proc, url, 180, logs / f"{variant}.log")
    except BaseException:
        stop(server, logs)
        raise
    print(f"{variant}: ready in {ready:.1f}s at {url}", file=sys.stderr, flush=True)
    return server


def stop(server: Server, logs: Path) -> None:
    stop_server(server.proc)
    if server.proc.returncode not in (0, -signal.SIGTERM):
        tail = (logs / f"{server.variant}.log").read_text()[-2000:]
        print(f"{server.variant} exited with {server.proc.returncode}:\n{tail}", file=sys.stderr)


def _progress(server: str, r: dict, clients: int) -> None:
    print(
        f"  {server:28s} {r['rows']:5d} rows x {clients:3d} clients: {r['rps']:8.1f} req/s "
        f"{r['rows_per_s']:9.0f} rows/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
        f"errors {r['errors']}",
        file=sys.stderr,
        flush=True,
    )


def measure(server: Server, bodies: dict[int, Path], args: argparse.Namespace) -> dict:
    """Single-row requests at each concurrency level, then each batch size."""
    out: dict[str, dict] = {"single": {}, "batch": {}}
    for clients in args.levels:
        r = run_load(server, bodies[1], 1, clients, args.duration, args.warmup, args.load)
        out["single"][clients] = r
        _progress(server.variant, r, clients)
    for rows in args.rows:
        r = run_load(
            server, bodies[rows], rows, args.batch_clients, args.duration, args.warmup, args.load
        )
        out["batch"][rows] = r
        _progress(server.variant, r, args.batch_clients)
    return out


def check_predictions(
    server: Server, bodies: list[str], reference: list[list[float]] | None, name: str
) -> list[list[float]]:
    preds = predictions(server.url, bodies)
    if reference is not None:
        diff = max(
            abs(a - b)
            for pa, pb in zip(reference, preds, strict=True)
            for a, b in zip(pa, pb, strict=True)
        )
        print(
            f"{server.variant}: max |difference| from {name}'s predictions on "
            f"{len(preds)} rows: {diff:.1e}",
            file=sys.stderr,
            flush=True,
        )
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="models:/name@alias (default: register serve-bench)")
    parser.add_argument("--tracking-uri", help="with --model")
    parser.add_argument(
        "--estimator",
        choices=("logreg", "xgboost"),
        default="logreg",
        help="the champion registered without --model: the logreg baseline (default) or "
        "XGBoost as parameters/churn.yaml sets it (the default experiment's model)",
    )
    parser.add_argument("--clients", type=int, default=10, help="of the headline (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="headline pairs (default 3)")
    parser.add_argument("--concurrency", default="1,10,50", help="single-row levels")
    parser.add_argument("--batch-rows", default="100,1000", help="rows per batch request")
    parser.add_argument("--batch-clients", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--variants",
        default="mlflow,mlfolio",
        help=f"servers beside the no-op app; mlfolio is always run (choose from {list(VARIANTS)})",
    )
    parser.add_argument(
        "--load",
        choices=("wrk", "asyncio"),
        default="wrk",
        help="load generator: wrk (default; 1 thread) or benchmarks/loadgen.py",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="a checkout of an earlier commit (git worktree add --detach DIR REV): its "
        "mlfolio serve joins the headline, alternated, for a before/after table",
    )
    parser.add_argument(
        "--asgi-noop",
        action="store_true",
        help="a bare ASGI no-op app (uvicorn alone, no framework) joins the headline, "
        "alternated: the ceiling of a route that skips FastAPI",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 repeat, 10 clients only, 1 s loads (figures not meaningful)",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.concurrency, args.duration, args.warmup = 1, "10", 1.0, 0.3

    variants = ["mlfolio"] + [v for v in args.variants.split(",") if v and v != "mlfolio"]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    args.levels = [int(c) for c in args.concurrency.split(",")]
    args.rows = [int(r) for r in args.batch_rows.split(",") if r]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.model:
            model_uri = args.model
            tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        else:
            tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
            print("registering the benchmark model ...", file=sys.stderr, flush=True)
            model_uri = register_model(tracking_uri, tmp_path / "artifacts", args.estimator)
        counts = {1: 500, **{r: max(2, 4000 // r) for r in args.rows}}
        check_bodies = request_bodies(50)
        bodies: dict[int, Path] = {}
        for rows, n in counts.items():
            bodies[rows] = tmp_path / f"bodies-{rows}.jsonl"
            bodies[rows].write_text("\n".join(request_bodies(n, rows)) + "\n")

        # The headline: the no-op app and mlfolio up together, loaded in turn, repeatedly.
        headline: list[dict[str, dict]] = []  # per repeat: server name -> its load
        results: dict[str, dict] = {}
        reference = None
        mlfolio = start("mlfolio", model_uri, tracking_uri, tmp_path)
        try:
            reference = check_predictions(mlfolio, check_bodies, None, "mlfolio")
            noop_server = start(NOOP, model_uri, tracking_uri, tmp_path)
            headliners = [noop_server, mlfolio]
            try:
                if args.baseline_src:
                    base = start(BASE, model_uri, tracking_uri, tmp_path, args.baseline_src)
                    headliners.append(base)
                    check_predictions(base, check_bodies, reference, "mlfolio")
                if args.asgi_noop:
                    headliners.append(start(NOOP_ASGI, model_uri, tracking_uri, tmp_path))
                for _ in range(args.repeats):
                    loads = {
                        s.variant: run_load(
                            s, bodies[1], 1, args.clients, args.duration, args.warmup, args.load
                        )
                        for s in headliners
                    }
                    headline.append(loads)
                    for variant, r in loads.items():
                        _progress(variant, r, args.clients)
            finally:
                for server in headliners[::-1]:
                    if server is not mlfolio:
                        stop(server, tmp_path)
            results["mlfolio"] = measure(mlfolio, bodies, args)
        finally:
            stop(mlfolio, tmp_path)
        log_rows = {}
        for variant in variants[1:]:
            server = start(variant, model_uri, tracking_uri, tmp_path)
            try:
                check_predictions(server, check_bodies, reference, "mlfolio")
                results[variant] = measure(server, bodies, args)
            finally:
                stop(server, tmp_path)
            log_dir = tmp_path / f"{variant}-predlog"
            if log_dir.is_dir():
                from mlfolio import predlog

                log_rows[variant] = len(predlog.read(log_dir))
    print_tables(args, headline, results, log_rows, load_before, os.getloadavg())


def print_before_after(args: argparse.Namespace, headline: list[dict[str, dict]]) -> None:
    """mlfolio serve of this checkout (after) against --baseline-src's (before), loaded in
    turn within each repeat, with the no-op app's figures as the yardstick."""
    print(
        f"\nbefore/after: mlfolio serve from {args.baseline_src} (before) and from this "
        f"checkout (after), {args.clients} connections, alternated in each repeat\n"
    )
    print(
        "| repeat | before req/s | after req/s | before p99 ms | after p99 ms "
        "| before CPU µs/req | after CPU µs/req | no-op req/s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    cpu_changes, rps_changes = [], []
    for k, loads in enumerate(headline, 1):
        noop, after, before = loads[NOOP], loads["mlfolio"], loads[BASE]
        print(
            f"| {k} | {before['rps']:.0f} | {after['rps']:.0f} | {before['p99_ms']:.2f} | "
            f"{after['p99_ms']:.2f} | {_f(before['cpu_us'], '.0f')} | "
            f"{_f(after['cpu_us'], '.0f')} | {noop['rps']:.0f} |"
        )
        rps_changes.append((after["rps"] / before["rps"] - 1) * 100)
        if before["cpu_us"] and after["cpu_us"]:
            cpu_changes.append((after["cpu_us"] / before["cpu_us"] - 1) * 100)
    print(
        f"\nafter vs before: req/s {_median(rps_changes):+.1f}% (median), server CPU per "
        f"request {_median(cpu_changes):+.1f}% (median of {len(cpu_changes)})"
    )


def print_asgi_ceiling(args: argparse.Namespace, headline: list[dict[str, dict]]) -> None:
    """mlfolio serve against uvicorn alone (a bare ASGI no-op, no framework), loaded in
    turn within each repeat: what is left above the server itself."""
    print(
        f"\nuvicorn alone: mlfolio serve against a bare ASGI no-op app (no FastAPI), "
        f"{args.clients} connections, alternated in each repeat\n"
    )
    print(
        "| repeat | ASGI no-op req/s | ASGI no-op p99 ms | mlfolio req/s | % of ASGI no-op "
        "| server CPU µs/req ASGI no-op / FastAPI no-op / mlfolio |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios = []
    for k, loads in enumerate(headline, 1):
        bare, noop, mine = loads[NOOP_ASGI], loads[NOOP], loads["mlfolio"]
        ratio = mine["rps"] / bare["rps"] * 100 if bare["rps"] else float("nan")
        ratios.append(ratio)
        print(
            f"| {k} | {bare['rps']:.0f} | {bare['p99_ms']:.2f} | {mine['rps']:.0f} | "
            f"{ratio:.0f}% | {_f(bare['cpu_us'], '.0f')} / {_f(noop['cpu_us'], '.0f')} / "
            f"{_f(mine['cpu_us'], '.0f')} |"
        )
    print(
        f"\nmlfolio serve at {_median(ratios):.0f}% of the bare ASGI no-op's req/s "
        f"(median of {len(ratios)})"
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _f(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or value != value else format(value, fmt)


def print_tables(
    args: argparse.Namespace,
    headline: list[dict[str, dict]],
    results: dict[str, dict],
    log_rows: dict[str, int],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    def loads(values: tuple[float, float, float]) -> str:
        return " ".join(f"{v:.2f}" for v in values)

    print(
        f"\nmachine: {os.cpu_count()} cores, load average {loads(load_before)} before, "
        f"{loads(load_after)} after; servers and load generator ({args.load}) on 127.0.0.1; "
        "closed loop, "
        f"{args.duration:g} s per load after {args.warmup:g} s warm-up"
    )
    print(
        f"\n1-row dataframe_split, {args.clients} clients: mlfolio serve against a no-op "
        "FastAPI app (reads the body, answers a constant) on the same uvicorn options\n"
    )
    print(
        "| repeat | no-op req/s | no-op p99 ms | mlfolio req/s | mlfolio p99 ms | % of no-op "
        "| server CPU µs/req no-op / mlfolio | load generator CPU no-op / mlfolio "
        "| other processes (cores) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios, p99s, cpu_ratios = [], [], []
    for k, loads in enumerate(headline, 1):
        noop, mine = loads[NOOP], loads["mlfolio"]
        ratio = mine["rps"] / noop["rps"] * 100 if noop["rps"] else float("nan")
        ratios.append(ratio)
        if noop["cpu_us"] and mine["cpu_us"]:
            cpu_ratios.append(noop["cpu_us"] / mine["cpu_us"] * 100)
        p99s.append(mine["p99_ms"])
        print(
            f"| {k} | {noop['rps']:.0f} | {noop['p99_ms']:.2f} | {mine['rps']:.0f} | "
            f"{mine['p99_ms']:.2f} | {ratio:.0f}% | {_f(noop['cpu_us'], '.0f')} / "
            f"{_f(mine['cpu_us'], '.0f')} | {noop['client_cpu']:.0%} / {mine['client_cpu']:.0%} "
            f"| {_f(noop['others'], '.2f')} / {_f(mine['others'], '.2f')} |"
        )
    spread = f" (range {min(ratios):.0f}-{max(ratios):.0f}%)" if len(ratios) > 1 else ""
    print(
        f"\nheadline: mlfolio serve at {_median(ratios):.0f}% of the no-op app's req/s{spread}, "
        f"p99 {_median(p99s):.2f} ms at {args.clients} clients "
        f"(median of {len(ratios)}; target >= 50%, p99 <= 5 ms)"
    )
    if cpu_ratios:
        print(
            f"server CPU per request: the no-op's is {_median(cpu_ratios):.0f}% of mlfolio's "
            f"(range {min(cpu_ratios):.0f}-{max(cpu_ratios):.0f}%): the req/s ratio when each "
            "server is limited by its own CPU"
        )

    if headline and BASE in headline[0]:
        print_before_after(args, headline)
    if headline and NOOP_ASGI in headline[0]:
        print_asgi_ceiling(args, headline)

    base = "mlflow" if "mlflow" in results else "mlfolio"
    print("\nsingle-row requests by number of clients\n")
    print(f"| server | clients | req/s | p50 ms | p99 ms | errors | x {base} | server CPU µs/req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant, res in results.items():
        for clients, r in res["single"].items():
            ref = results[base]["single"][clients]["rps"]
            times = r["rps"] / ref if ref else float("nan")
            print(
                f"| {variant} | {clients} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['errors']} | {times:.2f} | {_f(r['cpu_us'], '.0f')} |"
            )
    if args.rows:
        print(f"\nbatch requests: rows per request, {args.batch_clients} clients\n")
        print(
            f"| server | rows/request | req/s | rows/s | p50 ms | p99 ms | errors | "
            f"x {base} rows/s | server CPU µs/row |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for rows in args.rows:
            for variant, res in results.items():
                r = res["batch"][rows]
                ref = results[base]["batch"][rows]["rows_per_s"]
                per_row = None if r["cpu_us"] is None else r["cpu_us"] / rows
                print(
                    f"| {variant} | {rows} | {r['rps']:.1f} | {r['rows_per_s']:.0f} | "
                    f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                    f"{r['rows_per_s'] / ref if ref else float('nan'):.2f} | "
                    f"{_f(per_row, '.1f')} |"
                )
    for variant, n in log_rows.items():
        answered = sum(
            r["requests"] * r["rows"] for part in results[variant].values() for r in part.values()
        )
        print(
            f"\n{variant}: the prediction log holds {n} rows; {answered} rows were measured "
            "(warm-up and checks come on top)"
        )
    bad = {
        f"{v} {kind} {k}": r["statuses"]
        for v, res in results.items()
        for kind, part in res.items()
        for k, r in part.items()
        if r["errors"]
    }
    bad.update(
        {
            f"headline {k}": r["statuses"]
            for k, loads in enumerate(headline, 1)
            for r in loads.values()
            if r["errors"]
        }
    )
    if bad:
        print(f"\nnon-200 answers: {bad}")


if __name__ == "__main__":
    main()
