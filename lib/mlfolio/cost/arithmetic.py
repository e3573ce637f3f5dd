"""Cost arithmetic: pure functions of measured numbers and a :class:`PriceTable`.

No file, clock or network here: the run folder and the prediction log are read by
:mod:`mlfolio.pipeline.costing`, which hands the numbers in.

- A stage measured at ``cpu_s`` CPU-seconds over ``duration_s`` with ``peak_rss_mb``
  needs ``ceil(cpu_s / duration_s)`` vCPUs (its average parallelism) and its peak memory
  times ``headroom``; the cheapest instance with both runs it, billed per second of the
  stage's wall time, on demand or at the typical spot discount.
- Serving at ``rps`` requests per second of ``duration_s`` each: an instance endpoint
  costs its instance-hours whatever the traffic; Serverless Inference and Lambda cost
  ``rps x seconds per month x (duration x GB x price per GB-second + price per request)``.
  The break-even traffic is where they meet: above it the instance endpoint is cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from mlfolio.cost.prices import Instance, PriceTable
from mlfolio.errors import ConfigError

MB_PER_GIB = 1024.0
BYTES_PER_GB = 1e9  # AWS's "GB" of data processed
COST_FILE = "cost.json"  # what a run folder holds of this (mlfolio.pipeline.costing)
# Memory a stage's instance must have beyond its measured peak (the OS, the container,
# the variation between runs).
HEADROOM = 1.25


def spot_savings_percent(billable_s: float, training_s: float) -> float:
    """The savings SageMaker reports for a managed spot training job:
    ``(1 - BillableTimeInSeconds / TrainingTimeInSeconds) x 100``. A job interrupted and
    restarted has more training than billable seconds only for the time it waited; an
    uninterrupted job at the spot price reports what its spot discount saved."""
    if training_s <= 0:
        raise ConfigError(f"training seconds {training_s}: expected more than 0")
    if billable_s < 0:
        raise ConfigError(f"billable seconds {billable_s}: expected 0 or more")
    return (1.0 - billable_s / training_s) * 100.0


def vcpus_needed(cpu_s: float | None, duration_s: float) -> int:
    """A stage's average parallelism, rounded up (1 when its CPU time is unknown)."""
    if cpu_s is None or duration_s <= 0:
        return 1
    return max(1, math.ceil(cpu_s / duration_s - 1e-9))


def memory_gib_needed(peak_rss_mb: float | None, headroom: float = HEADROOM) -> float:
    """GiB an instance needs for a process that peaked at ``peak_rss_mb`` (0: unknown)."""
    return 0.0 if peak_rss_mb is None else peak_rss_mb * headroom / MB_PER_GIB


def cheapest_fit(
    instances: Mapping[str, Instance], vcpus: int, memory_gib: float
) -> tuple[str, Instance] | None:
    """The cheapest instance type with at least ``vcpus`` and ``memory_gib`` (ties: the
    one with more memory, then by name); None when none is big enough."""
    fits = [
        (name, inst)
        for name, inst in instances.items()
        if inst.vcpus >= vcpus and inst.memory_gib >= memory_gib
    ]
    if not fits:
        return None
    return min(fits, key=lambda f: (f[1].usd_per_hour, -f[1].memory_gib, f[0]))


def job_usd(usd_per_hour: float, seconds: float) -> float:
    """A job billed per second: ``seconds x usd_per_hour / 3600``."""
    return usd_per_hour * seconds / 3600.0


@dataclass(frozen=True)
class StageCost:
    """One stage on the cheapest SageMaker instance that fits it."""

    stage: str
    duration_s: float
    cpu_s: float | None
    peak_rss_mb: float | None
    vcpus_needed: int
    memory_gib_needed: float
    instance: str | None  # None: no instance in the table is big enough
    vcpus: int | None
    memory_gib: float | None
    usd_per_hour: float | None
    on_demand_usd: float | None
    spot_usd: float | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def stage_cost(
    stage: str,
    duration_s: float,
    cpu_s: float | None,
    peak_rss_mb: float | None,
    instances: Mapping[str, Instance],
    spot_discount: float,
    processes: int = 1,
    headroom: float = HEADROOM,
) -> StageCost:
    """What ``stage`` costs on the cheapest instance that fits it. ``processes``: worker
    processes of the same size alongside (tuning workers), each needing the peak memory."""
    vcpus = vcpus_needed(cpu_s, duration_s)
    memory = memory_gib_needed(peak_rss_mb, headroom) * max(1, processes)
    fit = cheapest_fit(instances, vcpus, memory)
    if fit is None:
        return StageCost(
            stage, duration_s, cpu_s, peak_rss_mb, vcpus, memory, None, None, None, None, None, None
        )
    name, inst = fit
    on_demand = job_usd(inst.usd_per_hour, duration_s)
    return StageCost(
        stage,
        duration_s,
        cpu_s,
        peak_rss_mb,
        vcpus,
        round(memory, 3),
        name,
        inst.vcpus,
        inst.memory_gib,
        inst.usd_per_hour,
        on_demand,
        on_demand * (1.0 - spot_discount),
    )


# -- serving ------------------------------------------------------------------------------
def seconds_per_month(table: PriceTable) -> float:
    return table.hours_per_month * 3600.0


def serverless_memory_mb(needed_mb: float, sizes: Sequence[int]) -> int:
    """The smallest Serverless Inference memory size holding ``needed_mb``; ConfigError
    when even the largest does not."""
    for size in sorted(sizes):
        if size >= needed_mb:
            return size
    raise ConfigError(
        f"the model server needs {needed_mb:.0f} MB: more than Serverless Inference's "
        f"largest size ({max(sizes)} MB)"
    )


def lambda_memory_mb(needed_mb: float, table: PriceTable) -> int:
    """Lambda memory (1 MB steps) holding ``needed_mb`` and giving one full vCPU (Lambda
    allots CPU in proportion to memory; request durations are measured on a core)."""
    lam = table.lambda_
    size = max(lam.min_memory_mb, lam.full_vcpu_memory_mb, math.ceil(needed_mb))
    if size > lam.max_memory_mb:
        raise ConfigError(
            f"the model server needs {needed_mb:.0f} MB: more than Lambda's {lam.max_memory_mb} MB"
        )
    return size


def per_request_usd(
    duration_s: float, memory_mb: float, usd_per_gb_second: float, usd_per_request: float
) -> float:
    """One request of ``duration_s`` at ``memory_mb``: compute plus the request charge."""
    return duration_s * memory_mb / MB_PER_GIB * usd_per_gb_second + usd_per_request


def data_usd_per_request(payload_bytes: float, table: PriceTable) -> float:
    """Data processed by a SageMaker endpoint: ``payload_bytes`` in and as many out."""
    return 2 * payload_bytes / BYTES_PER_GB * table.data_usd_per_gb


UTILIZATION = 0.7  # the busiest an endpoint's server process is planned to be


def capacity_rps(inst: Instance, duration_s: float, utilization: float = UTILIZATION) -> float:
    """Requests/s one instance carries with one server process (``mlfolio serve`` is one
    process: one core) kept ``utilization`` busy; a burstable instance only its sustained
    share of its vCPUs (``baseline``) when that is less than a core."""
    if duration_s <= 0:
        return math.inf
    cores = 1.0 if inst.baseline is None else min(1.0, inst.vcpus * inst.baseline)
    return utilization * cores / duration_s


def endpoint_instances(peak_rps: float, capacity: float) -> int:
    """Instances an endpoint needs at ``peak_rps``, each carrying ``capacity``; at least
    one."""
    if peak_rps <= 0:
        return 1
    return max(1, math.ceil(peak_rps / capacity - 1e-9))


@dataclass(frozen=True)
class ServingOption:
    option: str  # "instance endpoint", "serverless inference", "lambda"
    detail: str  # what was priced: the instance type and count, or the memory size
    monthly_usd: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def serving_options(
    table: PriceTable,
    mean_rps: float,
    peak_rps: float,
    duration_s: float,
    memory_mb: float,
    endpoint: tuple[str, Instance],
    payload_bytes: float = 1000.0,
) -> list[ServingOption]:
    """Monthly cost of serving ``mean_rps`` (``peak_rps`` at the busiest) of ``duration_s``
    each by the ``endpoint`` instance, by Serverless Inference and by Lambda, for a server
    whose peak memory is ``memory_mb`` (the sizes hold it plus ``HEADROOM``)."""
    month = seconds_per_month(table)
    requests = mean_rps * month
    data = data_usd_per_request(payload_bytes, table) * requests
    name, inst = endpoint
    count = endpoint_instances(peak_rps, capacity_rps(inst, duration_s))
    sl_mb = serverless_memory_mb(memory_mb * HEADROOM, table.serverless.memory_mb)
    sl = table.serverless
    lam_mb = lambda_memory_mb(memory_mb * HEADROOM, table)
    lam = table.lambda_
    return [
        ServingOption(
            "instance endpoint",
            f"{count} x {name}",
            count * inst.usd_per_hour * table.hours_per_month + data,
        ),
        ServingOption(
            "serverless inference",
            f"{sl_mb} MB",
            requests * per_request_usd(duration_s, sl_mb, sl.usd_per_gb_second, sl.usd_per_request)
            + data,
        ),
        ServingOption(
            "lambda",
            f"{lam_mb} MB",
            requests
            * per_request_usd(duration_s, lam_mb, lam.usd_per_gb_second, lam.usd_per_request),
        ),
    ]


def break_even_rps(instance_monthly_usd: float, per_request: float, table: PriceTable) -> float:
    """Requests per second at which a pay-per-request option costs ``instance_monthly_usd``
    a month (above it the instance is cheaper)."""
    if per_request <= 0:
        return math.inf
    return instance_monthly_usd / (per_request * seconds_per_month(table))


def serverless_break_even_rps(
    table: PriceTable, duration_s: float, memory_mb: float, endpoint: Instance
) -> float:
    """The traffic above which one ``endpoint`` instance costs less than Serverless
    Inference, for requests of ``duration_s`` on a server peaking at ``memory_mb`` (data processed
    costs both the same, so it cancels)."""
    sl = table.serverless
    size = serverless_memory_mb(memory_mb * HEADROOM, sl.memory_mb)
    per_request = per_request_usd(duration_s, size, sl.usd_per_gb_second, sl.usd_per_request)
    return break_even_rps(endpoint.usd_per_hour * table.hours_per_month, per_request, table)


def lambda_break_even_rps(
    table: PriceTable, duration_s: float, memory_mb: float, endpoint: Instance
) -> float:
    """The traffic above which one ``endpoint`` instance costs less than Lambda (the
    endpoint's data processing charge counted against it, at 1 kB each way)."""
    lam = table.lambda_
    per_request = per_request_usd(
        duration_s,
        lambda_memory_mb(memory_mb * HEADROOM, table),
        lam.usd_per_gb_second,
        lam.usd_per_request,
    )
    data = data_usd_per_request(1000.0, table)
    # instance + data x requests = lambda x requests
    return break_even_rps(endpoint.usd_per_hour * table.hours_per_month, per_request - data, table)


# -- traffic ------------------------------------------------------------------------------
# Upper bounds of the requests/s histogram's bins (per-minute rates; the last is open).
RATE_BINS = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Traffic:
    """Requests over a window: their mean and busiest rates, and a histogram of the
    per-minute rates (minutes with at least one request, by requests/s)."""

    requests: int
    window_s: float
    mean_rps: float
    peak_rps: float  # the busiest second's requests
    histogram: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _bin_label(i: int) -> str:
    lo = 0.0 if i == 0 else RATE_BINS[i - 1]
    return f"{lo:g}-{RATE_BINS[i]:g}" if i < len(RATE_BINS) else f">={RATE_BINS[-1]:g}"


def traffic(times: Sequence[float], window_s: float | None = None) -> Traffic:
    """The traffic of requests arriving at ``times`` (seconds), over ``window_s`` (None:
    from the first to the last request, at least one second)."""
    if not times:
        return Traffic(0, window_s or 0.0, 0.0, 0.0, {})
    first, last = min(times), max(times)
    window = window_s if window_s is not None else max(1.0, last - first)
    if window <= 0:
        raise ConfigError(f"traffic window {window_s}: expected more than 0 seconds")
    per_second: dict[int, int] = {}
    per_minute: dict[int, int] = {}
    for t in times:
        per_second[int(t - first)] = per_second.get(int(t - first), 0) + 1
        per_minute[int((t - first) // 60)] = per_minute.get(int((t - first) // 60), 0) + 1
    minute_s = min(60.0, window)
    histogram = {_bin_label(i): 0 for i in range(len(RATE_BINS) + 1)}
    for count in per_minute.values():
        rate = count / minute_s
        i = next((k for k, bound in enumerate(RATE_BINS) if rate < bound), len(RATE_BINS))
        histogram[_bin_label(i)] += 1
    return Traffic(
        len(times), window, len(times) / window, float(max(per_second.values())), histogram
    )


def usd(x: float | None) -> str:
    """A price as the table and the page show it: cents above a dollar, more digits below."""
    if x is None:
        return "-"
    if x >= 1 or x == 0:
        return f"${x:,.2f}"
    return f"${x:.3f}" if x >= 0.01 else f"${x:.6f}"
