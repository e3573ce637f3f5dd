"""``mlfolio serve`` against ``mlflow models serve`` on the same registered model.

Trains the logistic-regression baseline on data/telco_churn.csv, registers it as
``models:/serve-bench@champion`` in a temporary SQLite store (or takes ``--model`` and
``--tracking-uri``), then, one server at a time on 127.0.0.1, puts the same closed-loop load
on each: N clients (default 1, 10, 50), each sending single-row ``dataframe_split`` requests
back to back for a fixed duration, from a separate process (aiohttp). Before the load it
checks that both servers give the same predictions for the same rows.

    .venv/bin/python benchmarks/serve_bench.py                       # ~3 min
    .venv/bin/python benchmarks/serve_bench.py --duration 5 --concurrency 10
    .venv/bin/python benchmarks/serve_bench.py --variants mlflow,mlfolio,mlfolio-pipeline,\\
        mlfolio-pipeline-unbatched

Variants: ``mlflow`` (``mlflow models serve --env-manager local``, 1 worker, its default),
``mlfolio`` (default: compiled features + micro-batching), ``mlfolio-pipeline``
(``--scorer pipeline``: the sklearn pipeline + micro-batching) and
``mlfolio-pipeline-unbatched`` (``--scorer pipeline --max-batch-rows 1``),
``mlfolio-log`` (``--prediction-log`` in a temporary folder: every row written to SQLite)
and ``mlfolio-ab-log`` (a challenger — a second version of the model — with
``--challenger-weight 0.5``, plus the prediction log). Each log variant reports the rows
its log holds at the end next to the requests answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
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


# -- the load generator (runs in its own process) -----------------------------------
async def _load(
    url: str, bodies: list[bytes], concurrency: int, duration: float, warmup: float
) -> dict:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def client(k: int) -> None:
            nonlocal errors
            i = k
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                body = bodies[i % len(bodies)]
                i += concurrency
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    latencies.append(done - sent)
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status != 200:
                        errors += 1

        await asyncio.gather(*(client(k) for k in range(concurrency)))
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "rps": len(latencies) / duration,
        "p50_ms": pct(0.50) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
    }


def _load_main(args: argparse.Namespace) -> None:
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line]
    result = asyncio.run(_load(args.url, bodies, args.clients, args.duration, args.warmup))
    print(json.dumps(result))


# -- setup -----------------------------------------------------------------------------
def register_model(tracking_uri: str, artifacts: Path) -> str:
    """Fit the logreg baseline on the Telco file and register it as serve-bench@champion."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from mlfolio import config, data, features, registry, tracking

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
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(C=1.0, max_iter=2000))
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


def request_bodies(n: int) -> list[str]:
    """Single-row dataframe_split bodies, one per Telco row (JSON lines)."""
    import pandas as pd

    from mlfolio import config

    schema = config.load(ROOT / "parameters" / "churn.yaml").schema
    df = pd.read_csv(ROOT / "data" / "telco_churn.csv").drop(columns=["customerid", "churn"])
    # Numbers as a client holds them: a blank total is a missing value (JSON null), which
    # both servers take in a double column (MLflow refuses the text " " there).
    df[schema.numeric] = df[schema.numeric].apply(pd.to_numeric, errors="coerce")
    bodies = []
    for _, row in df.head(n).iterrows():
        values = [None if isinstance(v, float) and v != v else v for v in row.tolist()]
        split = {"columns": list(df.columns), "data": [values]}
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
    variant: str, model_uri: str, tracking_uri: str, logs: Path
) -> tuple[subprocess.Popen, str]:
    """Start one variant; ``{log}`` in its arguments becomes ``logs/<variant>-predlog``."""
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if VARIANTS[variant] is None:
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
            for a in VARIANTS[variant]
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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(url: str, bodies_file: Path, clients: int, duration: float, warmup: float) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "_load",
        "--url",
        f"{url}/invocations",
        "--bodies",
        str(bodies_file),
        "--clients",
        str(clients),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("_load", help=argparse.SUPPRESS)
    load.add_argument("--url", required=True)
    load.add_argument("--bodies", required=True)
    load.add_argument("--clients", type=int, required=True)
    load.add_argument("--duration", type=float, required=True)
    load.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--model", help="models:/name@alias (default: register serve-bench)")
    parser.add_argument("--tracking-uri", help="with --model")
    parser.add_argument("--concurrency", default="1,10,50")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--variants", default="mlflow,mlfolio,mlfolio-pipeline")
    args = parser.parse_args()
    if args.command == "_load":
        _load_main(args)
        return

    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.model:
            model_uri = args.model
            tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        else:
            tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
            print("registering the benchmark model ...", file=sys.stderr, flush=True)
            model_uri = register_model(tracking_uri, tmp_path / "artifacts")
        bodies = request_bodies(500)
        bodies_file = tmp_path / "bodies.jsonl"
        bodies_file.write_text("\n".join(bodies) + "\n")
        results: dict[str, dict[int, dict]] = {}
        reference: list[list[float]] | None = None
        for variant in variants:
            proc, url = start_server(variant, model_uri, tracking_uri, tmp_path)
            try:
                ready = wait_ready(proc, url, 180, tmp_path / f"{variant}.log")
                print(f"{variant}: ready in {ready:.1f}s at {url}", file=sys.stderr, flush=True)
                preds = predictions(url, bodies[:50])
                if reference is None:
                    reference = preds
                else:
                    diff = max(
                        abs(a - b)
                        for pa, pb in zip(reference, preds, strict=True)
                        for a, b in zip(pa, pb, strict=True)
                    )
                    print(
                        f"{variant}: max |difference| from {variants[0]}'s predictions on "
                        f"50 rows: {diff:.1e}",
                        file=sys.stderr,
                        flush=True,
                    )
                results[variant] = {}
                for clients in levels:
                    cpu_before = cpu_seconds(proc.pid)
                    res = run_load(url, bodies_file, clients, args.duration, args.warmup)
                    cpu_after = cpu_seconds(proc.pid)
                    # Server CPU per request (warm-up included on both sides of the ratio):
                    # steadier than req/s when other processes share the cores.
                    served = res["requests"] * (args.duration + args.warmup) / args.duration
                    res["cpu_us"] = (
                        None
                        if cpu_before is None or cpu_after is None or not served
                        else (cpu_after - cpu_before) / served * 1e6
                    )
                    results[variant][clients] = res
                    print(
                        f"  {variant:28s} {clients:3d} clients: {res['rps']:8.1f} req/s  "
                        f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  "
                        f"errors {res['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                stop_server(proc)
                if proc.returncode not in (0, -signal.SIGTERM):
                    tail = (tmp_path / f"{variant}.log").read_text()[-2000:]
                    print(f"{variant} exited with {proc.returncode}:\n{tail}", file=sys.stderr)
            log_dir = tmp_path / f"{variant}-predlog"
            if log_dir.is_dir():
                from mlfolio import predlog

                logged = predlog.read(log_dir)
                answered = sum(r["requests"] for r in results[variant].values())
                print(
                    f"  {variant}: the prediction log holds {len(logged)} rows "
                    f"({logged['variant'].value_counts().to_dict()}); {answered} requests "
                    "were measured (warm-up and checks come on top)",
                    file=sys.stderr,
                    flush=True,
                )
        print_table(results, levels, args.duration)


def print_table(results: dict[str, dict[int, dict]], levels: list[int], duration: float) -> None:
    print(
        f"\nsingle-row requests, closed loop, {duration:g} s per level, "
        f"{os.cpu_count()} cores, server and client on 127.0.0.1\n"
    )
    base = "mlflow" if "mlflow" in results else next(iter(results))
    print(f"| server | clients | req/s | p50 ms | p99 ms | errors | x {base} | server CPU µs/req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant, by_level in results.items():
        for clients in levels:
            r = by_level[clients]
            ratio = (
                r["rps"] / results[base][clients]["rps"]
                if results[base][clients]["rps"]
                else float("nan")
            )
            cpu = "n/a" if r.get("cpu_us") is None else f"{r['cpu_us']:.0f}"
            print(
                f"| {variant} | {clients} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['errors']} | {ratio:.2f} | {cpu} |"
            )
    bad = {v: {c: r["statuses"] for c, r in lv.items() if r["errors"]} for v, lv in results.items()}
    bad = {v: s for v, s in bad.items() if s}
    if bad:
        print(f"\nnon-200 answers: {bad}")


if __name__ == "__main__":
    main()
