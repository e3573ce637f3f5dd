"""Shared fixtures: real data from data/, an isolated MLflow store per test, small runs."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest_plugins = ("pytester",)  # tests/test_require_services.py runs pytest on small files

ROOT = Path(__file__).resolve().parents[1]
CHURN_CSV = ROOT / "data" / "telco_churn.csv"
CHURN_PARAMS = ROOT / "parameters" / "churn.yaml"

# Small but real: the whole Telco file, few trials, few bootstrap resamples.
SMALL = {
    "tuning": {"n_trials": 4, "cv_folds": 2, "timeout": None},
    "gate": {"bootstrap_samples": 200},
}


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch):
    """Tests never write to the developer's mlflow.db, and start without a registry URI
    left by an earlier test: ``mlflow.set_registry_uri(None)`` does not clear the one
    set before (nor the MLFLOW_REGISTRY_URI it exported), and an MlflowClient built with
    only a tracking URI would then query the earlier test's registry."""
    import mlflow.tracking._model_registry.utils as registry_utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.setenv("MLFOLIO_USER", "pytest")


@pytest.fixture(scope="module")
def cfg():
    """The default experiment's validated parameters."""
    from mlfolio import config

    return config.load(CHURN_PARAMS)


@pytest.fixture(scope="module")
def parts(cfg):
    """The churn file's train/valid/test parts, split as the preprocess stage splits them."""
    from mlfolio import data, features

    churn = data.validate(data.load_source(cfg.data), cfg.schema)
    return features.split(churn, cfg.schema, cfg.split, cfg.seed)


@pytest.fixture
def churn_raw() -> dict[str, Any]:
    return yaml.safe_load(CHURN_PARAMS.read_text())


@pytest.fixture
def tracking_dir(tmp_path) -> Path:
    folder = tmp_path / "tracking"
    folder.mkdir()
    return folder


def tracking_section(folder: Path) -> dict[str, Any]:
    return {
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        "artifact_location": (folder / "artifacts").as_uri(),
    }


@pytest.fixture
def write_params(tmp_path, tracking_dir, churn_raw):
    """write_params(name, **sections) → a parameter file: churn defaults, SMALL settings,
    an isolated tracking store, then the given sections merged over them."""

    def write(
        name: str = "params.yaml", base: dict[str, Any] | None = None, **sections: Any
    ) -> Path:
        raw = deep_update(base if base is not None else churn_raw, SMALL)
        raw = deep_update(raw, {"tracking": tracking_section(tracking_dir)})
        raw = deep_update(raw, sections)
        raw["data"]["uri"] = (
            str(ROOT / raw["data"]["uri"])
            if not os.path.isabs(raw["data"]["uri"]) and "://" not in raw["data"]["uri"]
            else raw["data"]["uri"]
        )
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


@pytest.fixture
def runs_root(tmp_path) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    return folder


# -- services a test needs -------------------------------------------------------------
# A developer's machine may lack PostgreSQL, Chromium or Prometheus: the test then skips,
# saying why. CI (.ci/run) sets MLFOLIO_REQUIRE_SERVICES=1, and there a missing service
# fails the test: a green CI run is one where every test ran.
REQUIRE_SERVICES = "MLFOLIO_REQUIRE_SERVICES"


def require_service(name: str, available: bool, why: str) -> None:
    """Return if ``name`` is ``available``; else skip saying ``why``, or fail under
    ``MLFOLIO_REQUIRE_SERVICES=1``. Callable in a test, a fixture or at module level."""
    if available:
        return
    message = f"{name} is not usable: {why}"
    if os.environ.get(REQUIRE_SERVICES) == "1":
        pytest.fail(f"{message} ({REQUIRE_SERVICES}=1: every service must be there)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_module(module: str, why: str) -> Any:
    """``import module`` (a test extra such as playwright or kfp), or require_service's
    skip/failure naming it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = f"{why} ({exc})"
    require_service(f"the Python package {module!r}", False, missing)


def load_script(path: Path) -> Any:
    """A script that is not in a package (``tools/``, ``benchmarks/``) as a module named
    by its file. It is registered in ``sys.modules``: its dataclasses look it up there."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def chromium_path() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )


def require_chromium() -> str:
    """Chromium's path (the HTML tests open the pages in it), or require_service's verdict."""
    path = chromium_path()
    require_service(
        "Chromium",
        path is not None,
        "looked for `chromium` on PATH and /usr/bin/chromium (Debian: apt-get install chromium)",
    )
    return path


def require_program(program: str, why: str) -> str:
    """The path of ``program`` on PATH, or require_service's verdict."""
    path = shutil.which(program)
    require_service(program, path is not None, f"not on PATH ({why})")
    return path


@pytest.fixture(scope="module")
def moto_url() -> Any:
    """A real moto server (all AWS services moto implements) on loopback, a port of its
    own; give tests dummy credentials and this endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def team_services(tmp_path_factory):
    """PostgreSQL, moto_server (S3) and two ``mlflow server`` processes, once per session:
    see tests/team.py."""
    from . import team

    services = team.start(tmp_path_factory.mktemp("team"))
    try:
        yield services
    finally:
        services.close()


@pytest.fixture
def team_env(monkeypatch, team_services):
    """This test's process (and what it starts) talks to the team services."""
    for key, value in team_services.env.items():
        monkeypatch.setenv(key, value)
    return team_services


# -- two workers (pytest-xdist: `make test` runs -n 2) ------------------------------------
# A module's tests stay on one worker, so its module-scoped run fixture is computed once;
# the modules that share the session's team services form one unit, so the services start
# once. Units go out longest first: a worker left with the longest one at the end would
# idle the other core. (xdist's own xdist_group marks do not reach its scheduler under
# pytest 9, whose node ids are no longer assignable: this scheduler reads the module from
# the node id instead.)
TEAM_MODULES = {"test_team", "test_kfp", "test_tune_rdb", "test_faults_store"}
LONGEST_FIRST = (
    "team",
    "test_reuse",
    "test_benchmarks",
    "test_stages",
    "test_pipeline_monitor",
    "test_reproduce",
    "test_interrupt",
    "test_faults_kfp",
    "test_faults_runner",
    "test_diff",
)


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: "team", or its module's name."""
    module = Path(nodeid.split("::", 1)[0]).stem
    return "team" if module in TEAM_MODULES else module


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))  # stable


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep LONGEST_FIRST, not "most tests first"
    return ModuleScheduling(config, log)
