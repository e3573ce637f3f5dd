"""What a run costs on AWS, and what serving it would cost: ``cost.json``, the index page's
section and ``mlfolio cost PARAMS|RUN_DIR`` (issue 23 §4).

The edges only: the run's manifest (each stage's wall time, CPU seconds and peak memory,
measured by :mod:`mlfolio.pipeline.engine`), its parameters (the configured SageMaker
instance types) and the prediction log (when each request came) are read here and handed
to the pure arithmetic of :mod:`mlfolio.cost` with the dated price table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlfolio import config, cost
from mlfolio.cost import usd
from mlfolio.errors import ConfigError, MlfolioError
from mlfolio.files import read_json, write_json

log = logging.getLogger(__name__)
COST_FILE = cost.COST_FILE
# Without a measurement: a request's duration and the server's memory, said to be assumed.
ASSUMED_DURATION_MS = 10.0
ASSUMED_MEMORY_MB = 512.0
PAYLOAD_BYTES = 1000.0  # a one-row request (and its answer), for the data processed charge
REFERENCE_RPS = (0.01, 0.1, 1.0, 10.0)  # rates priced when there is no traffic to price
HELP = "what a run costs on AWS, and what serving it would cost (SageMaker, Lambda)"
ABOUT = (
    "Price each stage of RUN_DIR (or of PARAMS' latest run under runs/) as a SageMaker job "
    "on the cheapest instance holding the vCPUs and peak memory it used, on demand and on "
    "spot; then a month of serving by an instance endpoint, Serverless Inference and Lambda "
    "at the prediction log's traffic (monitoring.prediction_log), at --rps, or at reference "
    "rates, with the break-even traffic. Prices: the dated table in the package (or "
    "--prices). Exit 0: printed; 2: not a run folder or parameter file, or a bad table."
)


@dataclass(frozen=True)
class Serving:
    """What serving is priced at, and where each number comes from."""

    traffic: cost.Traffic | None
    traffic_source: str
    duration_ms: float
    duration_source: str
    memory_mb: float
    memory_source: str


# -- stages -------------------------------------------------------------------------------
def _instance_of(params: dict[str, Any], stage: str) -> str | None:
    sm = params.get("sagemaker") or {}
    return (sm.get("instance_types") or {}).get(stage) or sm.get("instance_type")


def stage_costs(
    manifest: dict[str, Any], table: cost.PriceTable, job: str = "training"
) -> dict[str, Any]:
    """Each stage that executed in this run, on the cheapest instance that fits what it
    used, and on the instance the parameters configure (``sagemaker.instance_type``)."""
    params = manifest.get("parameters") or {}
    instances = table.jobs(job)
    discount = table.spot.typical_discount
    workers = int((params.get("tuning") or {}).get("n_workers") or 1)
    rows, skipped = [], {}
    for name, entry in (manifest.get("stages") or {}).items():
        if entry.get("reused_from"):
            skipped[name] = "reused from an earlier run (it cost nothing here)"
            continue
        if entry.get("status") in ("not run", "skipped") or not entry.get("duration_s"):
            skipped[name] = f"{entry.get('status', 'not run')}: nothing to pay"
            continue
        # tune's worker processes (n_workers > 1) each hold about the kernel's memory
        processes = workers if name == "tune" else 1
        fit = cost.stage_cost(
            name,
            float(entry["duration_s"]),
            entry.get("cpu_s"),
            entry.get("peak_rss_mb"),
            instances,
            discount,
            processes,
        )
        row: dict[str, Any] = {"status": entry.get("status"), **fit.to_json()}
        configured = _instance_of(params, name)
        if configured in instances:
            on_demand = cost.job_usd(instances[configured].usd_per_hour, fit.duration_s)
            row["configured"] = {
                "instance": configured,
                "on_demand_usd": on_demand,
                "spot_usd": on_demand * (1 - discount),
            }
        if entry.get("cpu_s") is None:
            row["note"] = "CPU time not recorded (a run before mlfolio measured it): 1 vCPU"
        rows.append(row)

    def total(key: str) -> float:
        return sum(r[key] or 0.0 for r in rows)

    return {
        "job": job,
        "stages": rows,
        "not_priced": skipped,
        "total": {
            "duration_s": total("duration_s"),
            "cpu_s": total("cpu_s"),
            "on_demand_usd": total("on_demand_usd"),
            "spot_usd": total("spot_usd"),
        },
    }


# -- serving ------------------------------------------------------------------------------
def log_traffic(folder: str | Path) -> cost.Traffic:
    """The traffic in a prediction log folder (every answered request in it)."""
    from mlfolio import predlog

    return cost.traffic(predlog.request_times(folder))


def serving_costs(table: cost.PriceTable, params: dict[str, Any], serving: Serving) -> dict:
    """Monthly cost of an instance endpoint (the cheapest that fits the server, and the one
    ``deploy.sagemaker`` configures), Serverless Inference and Lambda, at the traffic
    (or at reference rates without one), and the break-even traffic."""
    duration_s = serving.duration_ms / 1000.0
    memory_gib = serving.memory_mb * cost.HEADROOM / 1024.0
    fit = cost.cheapest_fit(table.realtime, 1, memory_gib)
    if fit is None:
        raise ConfigError(f"no real-time instance in {table.path} holds {memory_gib:.1f} GiB")
    endpoints = {"cheapest": fit}
    configured = ((params.get("deploy") or {}).get("sagemaker") or {}).get("instance_type")
    if configured in table.realtime:
        endpoints["configured"] = (configured, table.realtime[configured])
    rates = (
        [(serving.traffic.mean_rps, max(serving.traffic.peak_rps, serving.traffic.mean_rps))]
        if serving.traffic is not None
        else [(r, r) for r in REFERENCE_RPS]
    )
    priced = []
    for mean, peak in rates:
        options = cost.serving_options(
            table, mean, peak, duration_s, serving.memory_mb, fit, PAYLOAD_BYTES
        )
        if "configured" in endpoints and endpoints["configured"][0] != fit[0]:
            options.insert(
                1,
                cost.serving_options(
                    table, mean, peak, duration_s, serving.memory_mb, endpoints["configured"]
                )[0],
            )
        priced.append({"rps": mean, "peak_rps": peak, "options": [o.to_json() for o in options]})
    return {
        "traffic": serving.traffic.to_json() if serving.traffic else None,
        "traffic_source": serving.traffic_source,
        "duration_ms": serving.duration_ms,
        "duration_source": serving.duration_source,
        "memory_mb": serving.memory_mb,
        "memory_source": serving.memory_source,
        "payload_bytes": PAYLOAD_BYTES,
        "priced": priced,
        "break_even": {
            kind: break_even(table, name, inst, duration_s, serving.memory_mb)
            for kind, (name, inst) in endpoints.items()
        },
    }


def break_even(
    table: cost.PriceTable, name: str, inst: cost.Instance, duration_s: float, memory_mb: float
) -> dict[str, Any]:
    """Where one ``name`` instance becomes cheaper than Serverless Inference and Lambda,
    and whether one instance (one server process, 70% busy) carries that traffic."""
    capacity = cost.capacity_rps(inst, duration_s)
    out: dict[str, Any] = {"instance": name, "capacity_rps": capacity}
    for option, rps in (
        ("serverless", cost.serverless_break_even_rps(table, duration_s, memory_mb, inst)),
        ("lambda", cost.lambda_break_even_rps(table, duration_s, memory_mb, inst)),
    ):
        # more than one instance carries: n instances cost n times, serverless n times the
        # traffic too; so if one instance cannot carry the break-even traffic, none can
        out[f"{option}_rps"] = rps if rps <= capacity else None
        out[f"{option}_rps_unbounded"] = rps
    return out


# -- the run ------------------------------------------------------------------------------
def run_cost(
    run_dir: Path,
    manifest: dict[str, Any] | None = None,
    table: cost.PriceTable | None = None,
    job: str = "training",
    serving: Serving | None = None,
) -> dict[str, Any]:
    """The whole cost document of a run folder (what ``cost.json`` holds)."""
    table = table or cost.load()
    if manifest is None:
        from mlfolio.pipeline.manifest import Manifest

        manifest = Manifest.load(run_dir).data
    params = manifest.get("parameters") or {}
    serving = serving or default_serving(params, manifest=manifest)
    return {
        "run_dir": str(run_dir),
        "experiment": manifest.get("experiment"),
        "prices": table.provenance(),
        "spot": {
            "typical_discount": table.spot.typical_discount,
            "savings_percent": "(1 - billable / training seconds) x 100",
        },
        **stage_costs(manifest, table, job),
        "serving": serving_costs(table, params, serving),
    }


def deployed_peak_mb(manifest: dict[str, Any]) -> float | None:
    """The server's peak memory the deploy stage measured to size a serverless endpoint
    (``deploy.json``: targets.sagemaker.serverless_sizing), if it did."""
    target = ((manifest.get("deploy") or {}).get("targets") or {}).get("sagemaker") or {}
    return (target.get("serverless_sizing") or {}).get("measured_peak_rss_mb")


def default_serving(
    params: dict[str, Any],
    rps: float | None = None,
    duration_ms: float | None = None,
    memory_mb: float | None = None,
    manifest: dict[str, Any] | None = None,
) -> Serving:
    """The traffic given (``rps``), else the prediction log's (``monitoring.prediction_log``
    when it exists), else none; duration and memory given, else the memory the deploy
    stage measured (in ``manifest``), else the assumed ones."""
    for option, value in (("--duration-ms", duration_ms), ("--memory-mb", memory_mb)):
        if value is not None and not value > 0:
            raise ConfigError(f"{option} {value}: expected a number above 0")
    traffic, source = None, "none: priced at reference rates"
    folder = (params.get("monitoring") or {}).get("prediction_log")
    if rps is not None:
        if rps < 0:
            raise ConfigError(f"--rps {rps}: expected 0 or more requests per second")
        traffic, source = cost.Traffic(0, 0.0, rps, rps, {}), "command line (--rps)"
    elif folder:
        from mlfolio import predlog

        if predlog.db_path(folder).is_file():
            found = log_traffic(folder)
            if found.requests:
                traffic, source = found, f"prediction log {folder}"
            else:
                source = f"prediction log {folder} is empty: priced at reference rates"
    return Serving(
        traffic,
        source,
        duration_ms if duration_ms is not None else ASSUMED_DURATION_MS,
        "command line (--duration-ms)" if duration_ms is not None else "assumed",
        *(
            (memory_mb, "command line (--memory-mb)")
            if memory_mb is not None
            else (deployed, "measured by deploy: mlfolio serve's peak RSS")
            if (deployed := deployed_peak_mb(manifest or {})) is not None
            else (ASSUMED_MEMORY_MB, "assumed")
        ),
    )


def measure_serving(
    run_dir: Path, manifest: dict[str, Any], requests: int = 200, timeout_s: float = 120.0
) -> tuple[float, float]:
    """Serve the run's registered model with ``mlfolio serve`` on loopback, send it
    ``requests`` one-row requests (rows of the run's test split, one after another), and
    return (the server's own mean request duration in ms, from its
    ``mlfolio_request_duration_seconds`` on /metrics; its peak resident memory in MB)."""
    import urllib.request

    import pandas as pd

    from mlfolio.deploy.local import running_server, score_rows
    from mlfolio.procstat import peak_rss_mb
    from mlfolio.serve.contract import INVOCATIONS_PATH, METRICS_PATH

    model = manifest.get("model") or {}
    name, version = model.get("model_name"), model.get("version")
    tracking_uri = (manifest.get("mlflow") or {}).get("tracking_uri")
    if not (name and version and tracking_uri):
        raise ConfigError(f"{run_dir}: registered no model version: nothing to serve and time")
    schema = (manifest.get("parameters") or {}).get("schema") or {}
    features = [*schema.get("numeric", []), *schema.get("categorical", [])]
    rows = pd.read_parquet(run_dir / "data" / "test.parquet", columns=features)
    with running_server(f"models:/{name}/{version}", tracking_uri, ready_timeout=timeout_s) as (
        proc,
        url,
    ):
        for i in range(requests):
            score_rows(url, rows.iloc[[i % len(rows)]])
        with urllib.request.urlopen(url + METRICS_PATH, timeout=30) as resp:
            metrics = resp.read().decode()
        peak = peak_rss_mb(proc.pid)
    total = _metric(metrics, "mlfolio_request_duration_seconds_sum", INVOCATIONS_PATH)
    count = _metric(metrics, "mlfolio_request_duration_seconds_count", INVOCATIONS_PATH)
    if not count or peak is None:
        raise ConfigError(f"{url}{METRICS_PATH}: no request duration of {INVOCATIONS_PATH}")
    return round(1000.0 * total / count, 3), peak


def _metric(text: str, name: str, route: str) -> float:
    """The value of ``name`` for ``route`` in a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'route="{route}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def write(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    """Write ``cost.json`` in the run folder (None, logged, when it cannot be priced: the
    run's record never fails for its cost estimate)."""
    try:
        doc = run_cost(run_dir, manifest)
        target = run_dir / COST_FILE
        write_json(target, doc)
        return target
    except (MlfolioError, OSError, ValueError) as exc:
        log.warning("no %s for %s: %s", COST_FILE, run_dir, exc)
        return None


def _rps(x: float | None) -> str:
    return "-" if x is None else f"{x:,.3g}"


def render(doc: dict[str, Any]) -> list[str]:
    """The cost document as the lines ``mlfolio cost`` prints."""
    p = doc["prices"]
    lines = [
        f"what {Path(doc['run_dir']).name} costs on AWS ({p['region']}, SageMaker {doc['job']} "
        f"jobs; prices as published {p['published']}: {p['file']})",
        f"{'stage':<11}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}  {'needs':<16}"
        f"{'cheapest fit':<16}{'on demand':>11}{'spot':>11}",
    ]
    for r in doc["stages"]:
        needs = f"{r['vcpus_needed']} vCPU {r['memory_gib_needed']:.1f} GiB"
        cpu = "-" if r["cpu_s"] is None else f"{r['cpu_s']:.1f}"
        peak = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(
            f"{r['stage']:<11}{r['duration_s']:>8.1f}{cpu:>8}{peak:>9}  {needs:<16}"
            f"{r['instance'] or 'none fits':<16}{usd(r['on_demand_usd']):>11}"
            f"{usd(r['spot_usd']):>11}"
        )
    t = doc["total"]
    lines.append(
        f"{'total':<11}{t['duration_s']:>8.1f}{t['cpu_s']:>8.1f}{'':>9}  {'':<16}{'':<16}"
        f"{usd(t['on_demand_usd']):>11}{usd(t['spot_usd']):>11}"
    )
    configured = {r["configured"]["instance"] for r in doc["stages"] if r.get("configured")}
    if configured:
        od = sum(r["configured"]["on_demand_usd"] for r in doc["stages"] if r.get("configured"))
        sp = sum(r["configured"]["spot_usd"] for r in doc["stages"] if r.get("configured"))
        lines.append(
            f"on the configured {', '.join(sorted(configured))} (sagemaker.instance_type): "
            f"{usd(od)} on demand, {usd(sp)} spot"
        )
    for name, why in doc.get("not_priced", {}).items():
        lines.append(f"{name}: {why}")
    lines.append(
        f"spot: {doc['spot']['typical_discount']:.0%} off on demand (typical, assumed); "
        f"SageMaker reports a job's savings as {doc['spot']['savings_percent']}"
    )
    lines += _render_serving(doc["serving"])
    return lines


def _render_serving(s: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"serving a month: requests of {s['duration_ms']:g} ms ({s['duration_source']}), "
        f"server memory {s['memory_mb']:.0f} MB ({s['memory_source']}); "
        f"traffic: {s['traffic_source']}",
    ]
    tr = s.get("traffic")
    if tr and tr.get("requests"):
        bins = ", ".join(f"{k} req/s: {v} min" for k, v in tr["histogram"].items() if v)
        lines.append(
            f"  {tr['requests']} requests over {tr['window_s']:.0f} s: mean "
            f"{tr['mean_rps']:.3g} req/s, busiest second {tr['peak_rps']:.0f}; per minute: {bins}"
        )
    names = [f"{o['option']} {o['detail']}" for o in s["priced"][0]["options"]]
    width = max(24, *(len(n) + 2 for n in names))
    lines.append(f"  {'req/s':>8}" + "".join(f"{n:>{width}}" for n in names))
    for row in s["priced"]:
        cells = "".join(f"{usd(o['monthly_usd']):>{width}}" for o in row["options"])
        lines.append(f"  {_rps(row['rps']):>8}{cells}")
    for be in s["break_even"].values():
        for option in ("serverless", "lambda"):
            rps = be[f"{option}_rps"]
            if rps is not None:
                lines.append(
                    f"break-even vs {option}: one {be['instance']} is cheaper above "
                    f"{_rps(rps)} req/s (it carries up to {_rps(be['capacity_rps'])} req/s)"
                )
            else:
                lines.append(
                    f"break-even vs {option}: none; one {be['instance']} would pay off at "
                    f"{_rps(be[f'{option}_rps_unbounded'])} req/s, more than it carries "
                    f"({_rps(be['capacity_rps'])} req/s): {option} is cheaper at any traffic"
                )
    return lines


# -- mlfolio cost PARAMS|RUN_DIR ----------------------------------------------------------
def add_arguments(parser: Any) -> None:
    """``mlfolio cost``'s arguments (the CLI builds the parser, this module owns them)."""
    parser.add_argument("target", metavar="PARAMS|RUN_DIR", help="a parameter file or run folder")
    config.add_override_option(parser, "override a parameter of PARAMS (repeatable)")
    parser.add_argument("--rps", type=float, help="price this traffic (requests/s), not the log's")
    parser.add_argument("--duration-ms", type=float, help="one request's duration (ms)")
    parser.add_argument("--memory-mb", type=float, help="the model server's memory (MB)")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="serve the run's model on loopback and measure a one-row request's duration and "
        "the server's peak memory (instead of assuming them)",
    )
    parser.add_argument(
        "--job",
        choices=["training", "processing"],
        default="training",
        help="the SageMaker job kind each stage runs as (default training)",
    )
    parser.add_argument("--prices", type=Path, help="a price table (default: the packaged one)")
    parser.add_argument("--json", action="store_true", help="print the cost document as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def latest_run(root: Path, experiment: str) -> Path | None:
    """The newest training run folder of ``experiment`` under ``root`` (None: none)."""
    found = []
    for path in root.glob(f"*-{experiment}-*/manifest.json"):
        try:
            doc = read_json(path)
        except (OSError, ValueError):
            continue
        if doc.get("experiment") == experiment and doc.get("kind", "training") == "training":
            found.append(path.parent)
    return max(found, key=lambda p: p.name) if found else None


def command(args: Any) -> list[str]:
    """``mlfolio cost``: the cost document of a run folder, or of PARAMS (its latest run
    under runs/, else serving only), as printed lines (JSON with ``--json``)."""
    import json

    from mlfolio import config

    table = cost.load(args.prices) if args.prices else cost.load()
    target = Path(args.target)
    if target.is_dir():
        from mlfolio.pipeline.manifest import Manifest

        if args.param:
            raise ConfigError("-p overrides a parameter file's values, not a run folder's")
        run_dir, manifest = target.resolve(), Manifest.load(target.resolve()).data
        params = manifest.get("parameters") or {}
    else:
        cfg = config.load(target, config.parse_overrides(args.param))
        params = cfg.to_dict()
        run_dir = latest_run(config.project_dir() / "runs", cfg.experiment)
        if run_dir is not None:
            from mlfolio.pipeline.manifest import Manifest

            manifest = {**Manifest.load(run_dir).data, "parameters": params}
        else:
            run_dir = config.project_dir() / "runs" / f"(no run of {cfg.experiment} yet)"
            manifest = {"experiment": cfg.experiment, "parameters": params, "stages": {}}
    serving = default_serving(params, args.rps, args.duration_ms, args.memory_mb, manifest)
    if args.measure:
        if not (run_dir / "manifest.json").is_file():
            raise ConfigError("--measure serves a run's model: no run to take it from")
        duration_ms, memory_mb = measure_serving(run_dir, manifest)
        how = "measured: mlfolio serve on loopback, one-row requests"
        serving = replace(
            serving,
            duration_ms=args.duration_ms or duration_ms,
            duration_source=serving.duration_source if args.duration_ms else how,
            memory_mb=args.memory_mb or memory_mb,
            memory_source=serving.memory_source if args.memory_mb else how + ", peak RSS",
        )
    doc = run_cost(run_dir, manifest, table, args.job, serving)
    return [json.dumps(doc, indent=2)] if args.json else render(doc)
