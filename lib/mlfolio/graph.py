"""The stage graph: which notebooks make up a pipeline, what each writes and reads,
how a selection of stages is made and where a new run folder goes."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlfolio import products
from mlfolio.config import Config, project_dir
from mlfolio.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    sections: tuple[str, ...]  # parameter sections the stage reads

    @property
    def products(self) -> tuple[str, ...]:
        """What the stage writes, as declared in :mod:`mlfolio.products`."""
        return products.of_stage(self.name)


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "01_ingest.ipynb", ("experiment", "seed", "data", "schema", "tracking")),
    Stage("preprocess", "02_preprocess.ipynb", ("seed", "schema", "split", "features")),
    Stage("train", "03_train.ipynb", ("seed", "schema", "features", "training")),
    Stage("tune", "04_tune.ipynb", ("seed", "schema", "features", "tuning")),
    Stage("evaluate", "05_evaluate.ipynb", ("seed", "schema", "evaluation", "gate", "registry")),
    Stage("register", "06_register.ipynb", ("registry", "tracking")),
    Stage("deploy", "07_deploy.ipynb", ("registry", "tracking", "deploy")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# `mlfolio monitor`: its own run folder, linked to the retraining run it may fire.
MONITOR_STAGES: tuple[Stage, ...] = (
    Stage("monitor", "08_monitor.ipynb", ("seed", "schema", "registry", "tracking", "monitoring")),
    Stage(
        "ab_report", "09_ab_report.ipynb", ("seed", "schema", "registry", "tracking", "monitoring")
    ),
)
PIPELINES = {"training": STAGES, "monitor": MONITOR_STAGES}
# Logged to the pipeline run's artifacts under data/ (log_artifacts skips missing files):
# the monitor's reference rows, and the rows a model saw (train, valid) for a later gate.
REFERENCE_DATA = (
    "data/snapshot.parquet",
    "data/train.parquet",
    "data/valid.parquet",
    "data/test.parquet",
)


def notebooks_dir() -> Path:
    return project_dir() / "notebooks"


def select_stages(
    stages: Sequence[str] | None = None, from_stage: str | None = None, kind: str = "training"
) -> list[Stage]:
    """The stages to run: an explicit list, or ``from_stage`` to the end, or all."""
    if stages and from_stage:
        raise ConfigError("give either --stages or --from, not both")
    if kind not in PIPELINES:
        raise ConfigError(f"unknown pipeline {kind!r}; expected one of {', '.join(PIPELINES)}")
    pipeline = PIPELINES[kind]
    names = [s.name for s in pipeline]
    for name in [*(stages or []), *([from_stage] if from_stage else [])]:
        if name not in names:
            raise ConfigError(f"unknown stage {name!r}; expected one of {', '.join(names)}")
    if stages:
        return [s for s in pipeline if s.name in stages]
    if from_stage:
        return list(pipeline[names.index(from_stage) :])
    return list(pipeline)


def new_run_dir(cfg: Config, runs_root: Path | None = None, kind: str = "training") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = runs_root or project_dir() / "runs"
    suffix = "-monitor" if kind == "monitor" else ""
    return root / f"{stamp}-{cfg.experiment}{suffix}-{secrets.token_hex(3)}"
