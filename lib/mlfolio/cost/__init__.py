"""What a run costs on AWS, and what the serving options would cost (issue 23 §4).

``prices``: the dated price table in the package (``aws-us-east-1.yaml``: region, source
pages, the month the prices were published), typed. ``arithmetic``: pure functions of
measured numbers and that table (stage cost on the cheapest instance that fits, spot
savings, monthly serving cost, break-even traffic). The run folder, the prediction log
and the ``mlfolio cost`` command are :mod:`mlfolio.pipeline.costing`'s.
"""

from mlfolio.cost.arithmetic import (
    COST_FILE,
    HEADROOM,
    RATE_BINS,
    ServingOption,
    StageCost,
    Traffic,
    break_even_rps,
    capacity_rps,
    cheapest_fit,
    endpoint_instances,
    job_usd,
    lambda_break_even_rps,
    lambda_memory_mb,
    per_request_usd,
    serverless_break_even_rps,
    serverless_memory_mb,
    serving_options,
    spot_savings_percent,
    stage_cost,
    traffic,
    usd,
)
from mlfolio.cost.prices import DEFAULT_TABLE, Instance, PriceTable, load

__all__ = [
    "COST_FILE",
    "DEFAULT_TABLE",
    "HEADROOM",
    "RATE_BINS",
    "Instance",
    "PriceTable",
    "ServingOption",
    "StageCost",
    "Traffic",
    "break_even_rps",
    "capacity_rps",
    "cheapest_fit",
    "endpoint_instances",
    "job_usd",
    "lambda_break_even_rps",
    "lambda_memory_mb",
    "load",
    "per_request_usd",
    "serverless_break_even_rps",
    "serverless_memory_mb",
    "serving_options",
    "spot_savings_percent",
    "stage_cost",
    "traffic",
    "usd",
]
