"""Provenance: content hashes of what a stage depends on, git and package versions, and
``manifest.json`` (rewritten atomically after every change)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from mlfolio.config import Config, project_dir
from mlfolio.context import read_json, write_json
from mlfolio.errors import ConfigError
from mlfolio.pipeline.graph import PIPELINES, Stage, notebooks_dir

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


def _upstream_hashes(stage: Stage, run_dir: Path) -> dict[str, str]:
    """Hashes of the earlier stages' products, as a stage reads them now."""
    upstream = {}
    pipeline = next(p for p in PIPELINES.values() if stage in p)
    for earlier in pipeline[: pipeline.index(stage)]:
        for product in earlier.products:
            path = run_dir / product
            if path.exists() and path.suffix == ".parquet":
                upstream[product] = file_hash(path)
            elif path.exists() and path.suffix == ".json":  # leave out volatile MLflow ids
                payload = read_json(path)
                payload.pop("mlflow_run_id", None)
                upstream[product] = _sha256(json.dumps(payload, sort_keys=True).encode())
            elif path.exists():
                upstream[product] = file_hash(path)
    return upstream


def stage_inputs(stage: Stage, cfg: Config, run_dir: Path, mlfolio_hash: str) -> dict[str, Any]:
    """What a stage's result depends on: the basis for skipping unchanged stages."""
    params = cfg.to_dict()
    parts = {
        "notebook": notebook_source_hash(notebooks_dir() / stage.notebook),
        "mlfolio": mlfolio_hash,
        "parameters": _sha256(
            json.dumps({k: params.get(k) for k in stage.sections}, sort_keys=True).encode()
        ),
        "upstream": _upstream_hashes(stage, run_dir),
    }
    parts["hash"] = _sha256(json.dumps(parts, sort_keys=True).encode())
    return parts


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
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# -- the run ---------------------------------------------------------------------------
class Manifest:
    """manifest.json, rewritten atomically after every change."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        path = run_dir / "manifest.json"
        if not path.exists():
            raise ConfigError(f"{run_dir}: no manifest.json; is this a run folder?")
        try:
            return cls(path, read_json(path))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None

    def save(self) -> None:
        self.data["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_json(self.path, self.data)
