"""The stage graph: which notebooks make up a pipeline, what each writes and reads,
how a selection of stages is made and where a new run folder goes."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlfolio import products, progress
from mlfolio.config import Config, project_dir
from mlfolio.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage notebook and what it declares about itself: the runner, reuse, the input
    hashes and the KFP wiring read these traits, never the stage's name."""

    name: str
    notebook: str
    sections: tuple[str, ...]  # parameter sections the stage reads
    # Products of earlier stages it reads from the run folder (paths in mlfolio.products):
    # hashed into its inputs, and the KFP artifacts its task receives.
    reads: tuple[str, ...] = ()
    reads_source: bool = False  # reads the data source (outside the run folder): hashed
    reads_champion: bool = False  # its result depends on the champion version: hashed
    # False: its effect is outside the run folder (register checks for a duplicate version
    # itself, deploy re-checks what it deploys), so it always executes.
    reusable: bool = True
    decides_gate: bool = False  # its product holds the gate verdict (evaluate)
    gated: bool = False  # runs only when the gate passed (KFP: inside dsl.If)
    # Stages it follows though it reads none of their products: their effect is outside
    # the run folder (deploy serves the version register promoted).
    after: tuple[str, ...] = ()
    fans_out: bool = False  # its trials may run in separate worker tasks (tuning.n_workers)
    # Reads only the model server's prediction log: runs only when the log holds rows.
    needs_logged_rows: bool = False
    progress: str | None = None  # a file it rewrites while it runs (the runner shows it)
    # Written in place (Optuna appends to its journal): copied, never linked, not required.
    in_place: tuple[str, ...] = ()

    @property
    def writes(self) -> tuple[str, ...]:
        """What the stage writes, as declared in :mod:`mlfolio.products`."""
        return products.of_stage(self.name)

    @property
    def upstream(self) -> tuple[str, ...]:
        """The stages whose products it reads, in the order of its ``reads``."""
        return tuple(dict.fromkeys(products.producer(path) or "?" for path in self.reads))


_SPLITS = tuple(p.path for p in products.SPLITS.values())
STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "01_ingest.ipynb",
        ("experiment", "seed", "data", "schema", "tracking"),
        reads_source=True,
    ),
    Stage(
        "preprocess",
        "02_preprocess.ipynb",
        ("seed", "schema", "split", "features"),
        reads=(products.SNAPSHOT.path,),
    ),
    Stage(
        "train",
        "03_train.ipynb",
        ("seed", "schema", "features", "training"),
        reads=(*_SPLITS, products.SEEN_ROWS.path),
    ),
    Stage(
        "tune",
        "04_tune.ipynb",
        ("seed", "schema", "features", "tuning"),
        reads=(*_SPLITS, products.SEEN_ROWS.path),
        fans_out=True,
        progress=progress.TUNE,
        in_place=("tune/study.journal",),
    ),
    Stage(
        "evaluate",
        "05_evaluate.ipynb",
        ("seed", "schema", "evaluation", "gate", "registry"),
        # the snapshot for its date in the model card evaluate begins
        reads=(
            products.SNAPSHOT.path,
            products.INGEST.path,
            *_SPLITS,
            products.PREPROCESS.path,
            products.TRAIN.path,
            products.TUNE.path,
        ),
        reads_champion=True,
        decides_gate=True,
    ),
    Stage(
        "register",
        "06_register.ipynb",
        ("registry", "tracking"),
        # the model card it completes reads ingest's and preprocess's products too
        reads=(
            products.SNAPSHOT.path,
            products.INGEST.path,
            products.PREPROCESS.path,
            products.EVALUATE.path,
        ),
        reads_champion=True,
        reusable=False,
        gated=True,
    ),
    Stage(
        "deploy",
        "07_deploy.ipynb",
        ("registry", "tracking", "deploy"),
        reads=(products.SPLITS["test"].path,),  # the local target's smoke test rows
        reusable=False,
        gated=True,
        after=("register",),
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def _monitor_stage(name: str, notebook: str, **traits: bool) -> Stage:
    """A stage of ``mlfolio monitor``: its own run folder, linked to the retraining run it
    may fire. It reads outside its run folder (the champion's run, the prediction log), so
    it is never reused."""
    sections = ("seed", "schema", "registry", "tracking", "monitoring")
    return Stage(name, notebook, sections, reusable=False, **traits)


MONITOR_STAGES: tuple[Stage, ...] = (
    _monitor_stage("monitor", "08_monitor.ipynb"),
    # compares the variants the model server logged: nothing to compare without rows
    _monitor_stage("ab_report", "09_ab_report.ipynb", needs_logged_rows=True),
)
PIPELINES = {"training": STAGES, "monitor": MONITOR_STAGES}
# Logged to the pipeline run's artifacts under data/ (log_artifacts skips missing files):
# the monitor's reference rows, and the rows a model saw (train, valid) for a later gate.
REFERENCE_DATA = (products.SNAPSHOT.path, *_SPLITS)


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
