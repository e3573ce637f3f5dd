"""Provenance: content hashes of what a stage depends on, git and package versions, and
``manifest.json`` (rewritten atomically after every change)."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from mlfolio.config import Config, DataConfig, project_dir
from mlfolio.files import read_json
from mlfolio.graph import Stage, notebooks_dir

log = logging.getLogger(__name__)

KEY_PACKAGES = (
    "mlfolio",
    "mlflow",
    "optuna",
    "scikit-learn",
    "xgboost",
    "pandas",
    "numpy",
    "papermill",
    "nbconvert",
    "pyarrow",
)


# -- hashes and provenance -------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def notebook_source_hash(path: Path) -> str:
    """Hash of a notebook's cell sources only (outputs and metadata do not count)."""
    nb = json.loads(path.read_text())
    cells = [[c["cell_type"], "".join(c["source"])] for c in nb["cells"]]
    return _sha256(json.dumps(cells).encode())


def package_files() -> list[Path]:
    """Every source file of the installed ``mlfolio`` package, subpackages included."""
    root = Path(__file__).resolve().parents[1]
    return sorted(root.rglob("*.py"))


def package_source_hash() -> str:
    """Hash of the ``mlfolio`` source (paths relative to the package, and contents)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in package_files():
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Names a run gives what it logs, not what it computed: a JSON product names the models it
# logged (URIs, run ids) and its study after its run folder. Two runs that computed the same
# thing differ only there; the model's parameters and scores recorded beside each URI
# still tell two models apart. Hashed with them, an unchanged stage re-executed (e.g. by
# `mlfolio reproduce`) would make every later stage miss.
VOLATILE_KEYS = frozenset({"mlflow_run_id", "run_id", "model_uri", "model_id", "study_name"})


def content(payload: Any) -> Any:
    """A JSON document without :data:`VOLATILE_KEYS`, at any depth."""
    if isinstance(payload, dict):
        return {k: content(v) for k, v in payload.items() if k not in VOLATILE_KEYS}
    if isinstance(payload, list):
        return [content(v) for v in payload]
    return payload


def _product_hash(path: Path) -> str:
    if path.suffix == ".json":  # its content, key order and MLflow ids aside
        return _sha256(json.dumps(content(read_json(path)), sort_keys=True).encode())
    return file_hash(path)


def upstream_hashes(
    stage: Stage, run_dir: Path, located: Mapping[str, Path] | None = None
) -> dict[str, str]:
    """Hashes of the products the stage declares it reads, as it reads them now
    (``located``: products that are still elsewhere, e.g. in the run a stage is about to be
    reused from)."""
    upstream = {}
    for product in stage.reads:
        path = (located or {}).get(product) or run_dir / product
        if path.exists():
            upstream[product] = _product_hash(path)
    return upstream


def external_state(
    stage: Stage, cfg: Config, source_hash: str | None = None, champion: str | None = None
) -> dict[str, Any]:
    """What a stage reads from outside the run folder, as values that change when it does:
    the tracking store its runs and models live in, the data source (a stage that
    ``reads_source``), the champion version the gate compares against (``reads_champion``)."""
    state: dict[str, Any] = {"tracking_uri": cfg.tracking_uri()}
    if stage.reads_source:
        state["data"] = source_hash
    if stage.reads_champion:
        pinned = getattr(cfg.evaluation, "champion_version", None)
        # A pinned version is a parameter (hashed with the section); else the alias counts.
        state["champion"] = f"pinned {pinned}" if pinned is not None else champion
    return state


def stage_inputs(
    stage: Stage,
    cfg: Config,
    run_dir: Path,
    mlfolio_hash: str,
    external: dict[str, Any] | None = None,
    packages: dict[str, str] | None = None,
    located: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """What a stage's result depends on, hashed: its notebook source, the ``mlfolio``
    source, its parameter sections, the upstream products, the versions of the packages
    it runs on and the ``external`` state it reads (:func:`external_state`). Equal
    ``hash`` values mean the stage would compute the same thing: the basis for reuse."""
    params = cfg.to_dict()
    versions = packages if packages is not None else package_versions()
    parts = {
        "notebook": notebook_source_hash(notebooks_dir() / stage.notebook),
        "mlfolio": mlfolio_hash,
        "parameters": _sha256(
            json.dumps({k: params.get(k) for k in stage.sections}, sort_keys=True).encode()
        ),
        "upstream": upstream_hashes(stage, run_dir, located),
        "packages": _sha256(json.dumps(versions, sort_keys=True).encode()),
        "external": external or {},
    }
    parts["hash"] = _sha256(json.dumps(parts, sort_keys=True).encode())
    return parts


def source_hash(source: DataConfig) -> str:
    """The content hash of the data source as ingest reads it (see
    :func:`mlfolio.data.source_hash`): the file's bytes, or the rows of an S3 object or a
    SQL query (those are read here, through :func:`mlfolio.data.load_source`)."""
    from mlfolio import data

    if source.kind == "file":
        return data.source_hash(source)
    return data.source_hash(source, data.load_source(source))


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=project_dir(), capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def package_versions() -> dict[str, str]:
    """Versions of :data:`KEY_PACKAGES` and of Python itself."""
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
