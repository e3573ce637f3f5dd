"""The cost arithmetic (mlfolio.cost) against numbers worked out by hand, and the dated
price table it reads."""

from __future__ import annotations

import math

import pytest
import yaml

from mlfolio import cost
from mlfolio.cost import Instance
from mlfolio.errors import ConfigError

TABLE = cost.load()


def test_the_packaged_table_says_where_and_when_its_prices_are_from():
    p = TABLE.provenance()
    assert p["region"] == "us-east-1" and p["currency"] == "USD"
    assert p["published"] and p["read_on"]
    assert set(p["sources"]) >= {"sagemaker", "lambda"}
    assert all(url.startswith("https://") for url in p["sources"].values())
    assert TABLE.hours_per_month == 730
    # every kind of price the arithmetic needs is there
    assert TABLE.training and TABLE.processing and TABLE.realtime
    assert 0 < TABLE.spot.typical_discount < 1
    assert TABLE.serverless.memory_mb == [1024, 2048, 3072, 4096, 5120, 6144]


def test_a_table_with_a_wrong_field_names_the_file_and_field(tmp_path):
    raw = yaml.safe_load(cost.DEFAULT_TABLE.read_text())
    raw["training"]["ml.m5.large"]["usd_per_hour"] = -1
    bad = tmp_path / "prices.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"prices.yaml: training\.ml\.m5\.large\.usd_per_hour"):
        cost.load(bad)
    raw["training"]["ml.m5.large"] = {"vcpus": 2, "memory_gib": 8, "usd_per_hour": 1, "gpu": 0}
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="gpu"):  # an unknown key: a typo, not ignored
        cost.load(bad)
    with pytest.raises(ConfigError, match="nowhere.yaml: cannot read"):
        cost.load(tmp_path / "nowhere.yaml")
    with pytest.raises(ConfigError, match="expected 'training' or 'processing'"):
        TABLE.jobs("inference")


def test_spot_savings_is_the_formula_sagemaker_reports():
    # DescribeTrainingJob: TrainingTimeInSeconds 1000, BillableTimeInSeconds 300 -> 70 %
    assert cost.spot_savings_percent(300, 1000) == pytest.approx(70.0)
    assert cost.spot_savings_percent(1000, 1000) == 0.0
    assert cost.spot_savings_percent(0, 50) == 100.0
    with pytest.raises(ConfigError, match="training seconds 0"):
        cost.spot_savings_percent(10, 0)
    with pytest.raises(ConfigError, match="billable seconds -1"):
        cost.spot_savings_percent(-1, 10)


INSTANCES = {
    "small": Instance(vcpus=2, memory_gib=4, usd_per_hour=0.10),
    "mem": Instance(vcpus=2, memory_gib=16, usd_per_hour=0.15),
    "cpu": Instance(vcpus=8, memory_gib=8, usd_per_hour=0.40),
}


def test_the_cheapest_instance_with_enough_vcpus_and_memory():
    assert cost.cheapest_fit(INSTANCES, 1, 0.5)[0] == "small"
    assert cost.cheapest_fit(INSTANCES, 2, 6.0)[0] == "mem"  # small lacks memory
    assert cost.cheapest_fit(INSTANCES, 3, 1.0)[0] == "cpu"  # only cpu has 3+ vCPUs
    assert cost.cheapest_fit(INSTANCES, 8, 10.0) is None


def test_a_stage_is_priced_by_the_second_on_the_instance_that_fits():
    # 36 s wall, 54 CPU-s -> 1.5 cores on average -> 2 vCPUs; 3000 MB x 1.25 = 3.66 GiB
    fit = cost.stage_cost("tune", 36.0, 54.0, 3000.0, INSTANCES, 0.7)
    assert (fit.vcpus_needed, fit.memory_gib_needed) == (2, pytest.approx(3.662, abs=1e-3))
    assert fit.instance == "small"
    assert fit.on_demand_usd == pytest.approx(0.001)  # 0.10 $/h x 36 s / 3600
    assert fit.spot_usd == pytest.approx(0.0003)
    # three tuning workers of that size: 11 GiB -> the 16 GiB instance
    three = cost.stage_cost("tune", 36.0, 54.0, 3000.0, INSTANCES, 0.7, processes=3)
    assert three.instance == "mem" and three.on_demand_usd == pytest.approx(0.0015)
    # unknown CPU time: 1 vCPU; too big for every instance: no price, said so
    assert cost.stage_cost("x", 10.0, None, None, INSTANCES, 0.7).vcpus_needed == 1
    huge = cost.stage_cost("x", 10.0, 100.0, 1e6, INSTANCES, 0.7)
    assert huge.instance is None and huge.on_demand_usd is None


def test_vcpus_needed_is_the_average_parallelism_rounded_up():
    assert cost.arithmetic.vcpus_needed(10.0, 10.0) == 1
    assert cost.arithmetic.vcpus_needed(10.01, 10.0) == 2
    assert cost.arithmetic.vcpus_needed(0.2, 10.0) == 1
    assert cost.arithmetic.vcpus_needed(5.0, 0.0) == 1


def test_serverless_and_lambda_memory_sizes():
    assert cost.serverless_memory_mb(300, TABLE.serverless.memory_mb) == 1024
    assert cost.serverless_memory_mb(1025, TABLE.serverless.memory_mb) == 2048
    with pytest.raises(ConfigError, match="6144 MB"):
        cost.serverless_memory_mb(7000, TABLE.serverless.memory_mb)
    # Lambda: never less than one full vCPU's memory (durations are measured on a core)
    assert cost.lambda_memory_mb(64, TABLE) == 1769
    assert cost.lambda_memory_mb(2000.2, TABLE) == 2001
    with pytest.raises(ConfigError, match="10240 MB"):
        cost.lambda_memory_mb(20000, TABLE)


def test_a_month_of_serving_worked_by_hand():
    # a server peaking at 800 MB (+25%: 1000 MB -> the 1 GB size)
    # 1 req/s of 10 ms on 1 GB: 2,628,000 requests a month (730 h)
    #   serverless: 2.628e6 x 0.01 s x 1 GB x $0.00002 = $0.5256, + data 2 kB x $0.016/GB
    #     per request = 2.628e6 x 3.2e-8 = $0.0841 -> $0.6097
    #   lambda at 1769 MB (one vCPU): 2.628e6 x (0.01 x 1769/1024 x $0.0000166667
    #     + $0.0000002) = 2.628e6 x 4.87920e-7 = $1.28225
    #   ml.m5.large endpoint: 730 x $0.115 = $83.95, + the same data $0.0841
    m5 = ("ml.m5.large", TABLE.realtime["ml.m5.large"])
    options = cost.serving_options(TABLE, 1.0, 1.0, 0.010, 800, m5, 1000.0)
    got = {o.option: o for o in options}
    assert got["serverless inference"].monthly_usd == pytest.approx(0.5256 + 0.084096)
    assert got["lambda"].monthly_usd == pytest.approx(1.282254, rel=1e-5)
    assert got["lambda"].detail == "1769 MB"
    assert got["instance endpoint"].monthly_usd == pytest.approx(83.95 + 0.084096)
    assert got["instance endpoint"].detail == "1 x ml.m5.large"
    assert got["serverless inference"].detail == "1024 MB"
    # 900 MB + 25% needs more than 1 GB: the 2 GB size, twice the compute
    bigger = cost.serving_options(TABLE, 1.0, 1.0, 0.010, 900, m5, 1000.0)[1]
    assert bigger.detail == "2048 MB" and bigger.monthly_usd == pytest.approx(2 * 0.5256 + 0.084096)
    # 200 req/s at peak of 10 ms: one process 70% busy carries 70 req/s -> 3 instances
    busy = cost.serving_options(TABLE, 50.0, 200.0, 0.010, 1024, m5)
    assert busy[0].detail == "3 x ml.m5.large"
    # a burstable ml.t2.medium sustains 2 x 20% of a core: 28 req/s -> 8 of them
    t2 = ("ml.t2.medium", TABLE.realtime["ml.t2.medium"])
    assert cost.serving_options(TABLE, 50.0, 200.0, 0.010, 1024, t2)[0].detail == "8 x ml.t2.medium"


def test_the_traffic_one_instance_carries():
    m5, t2 = TABLE.realtime["ml.m5.large"], TABLE.realtime["ml.t2.medium"]
    assert cost.capacity_rps(m5, 0.010) == pytest.approx(70.0)  # 0.7 of one core / 10 ms
    assert cost.capacity_rps(t2, 0.010) == pytest.approx(28.0)  # 0.7 x 0.4 core / 10 ms
    assert cost.capacity_rps(m5, 0.0) == math.inf
    assert cost.endpoint_instances(0.0, 70.0) == 1
    assert cost.endpoint_instances(70.0, 70.0) == 1 and cost.endpoint_instances(70.1, 70.0) == 2


def test_break_even_traffic_worked_by_hand():
    # ml.t2.medium: 730 x $0.056 = $40.88 a month; serverless at 1 GB (an 800 MB server),
    # 10 ms: $0.5256 per (req/s) a month -> 40.88 / 0.5256 = 77.78 req/s
    t2 = TABLE.realtime["ml.t2.medium"]
    assert cost.serverless_break_even_rps(TABLE, 0.010, 800, t2) == pytest.approx(77.777, 1e-4)
    # 2 ms requests on 2 GB (a 1.5 GB server): 40.88 / (2.628e6 x 0.002 x 2 x 0.00002)
    assert cost.serverless_break_even_rps(TABLE, 0.002, 1500, t2) == pytest.approx(
        40.88 / (2.628e6 * 0.002 * 2 * 0.00002)
    )
    # lambda at 1769 MB, 10 ms: 4.87920e-7 $/request, minus the endpoint's 3.2e-8 of data
    assert cost.lambda_break_even_rps(TABLE, 0.010, 1024, t2) == pytest.approx(
        40.88 / (2.628e6 * (0.01 * 1769 / 1024 * 0.0000166667 + 0.0000002 - 3.2e-8))
    )
    assert cost.break_even_rps(40.88, 0.0, TABLE) == math.inf


def test_traffic_from_request_times():
    # 120 requests in the first minute (2 req/s), 6 in the second (0.1 req/s), 3 of
    # them in one second
    times = [i * 0.5 for i in range(120)] + [60.0, 70.0, 80.0, 90.0, 100.0, 100.2, 100.4]
    t = cost.traffic(times)
    assert t.requests == 127 and t.window_s == pytest.approx(100.4)
    assert t.mean_rps == pytest.approx(127 / 100.4)
    assert t.peak_rps == 3.0  # second 100: three requests
    assert t.histogram["1-10"] == 1 and t.histogram["0.1-1"] == 1
    assert sum(t.histogram.values()) == 2
    assert cost.traffic([]).requests == 0
    # over a given window (the log's whole day): the mean counts the idle time too
    assert cost.traffic(times, window_s=86400.0).mean_rps == pytest.approx(127 / 86400)
    assert cost.traffic([5.0]).mean_rps == 1.0  # one request: a window of one second
