"""Reusing unchanged stages.

A stage whose input hash (:func:`~mlfolio.pipeline.provenance.stage_inputs`) equals the
one of a succeeded stage in an earlier run folder of the same experiment is not executed:
that stage's products, executed notebook and HTML are hard-linked (else copied) into the
new run folder and its manifest entry says ``reused_from``. Side-effecting stages
(``reusable=False``: register, deploy) always execute.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfolio.config import Config
from mlfolio.errors import MlfolioError
from mlfolio.graph import Stage
from mlfolio.pipeline.manifest import StageEntry
from mlfolio.pipeline.provenance import (
    external_state,
    file_hash,
    package_source_hash,
    package_versions,
    source_hash,
    stage_inputs,
)

log = logging.getLogger(__name__)


def stage_files(stage: Stage) -> list[str]:
    """The files a stage leaves in a run folder: its products, executed notebook and HTML."""
    return [*stage.writes, stage.notebook, stage.notebook.replace(".ipynb", ".html")]


def outputs(stage: Stage, folder: Path) -> dict[str, str]:
    """Content hashes of the stage's files in ``folder`` (recorded when it succeeds; a
    later run reuses it only while they still match)."""
    return {rel: file_hash(folder / rel) for rel in stage_files(stage) if (folder / rel).exists()}


def detach(stage: Stage, folder: Path) -> None:
    """Give the stage's files in ``folder`` their own inode before the stage executes
    there: hard links shared with the run they were reused from must not change it."""
    for rel in [*stage_files(stage), *stage.in_place]:
        path = folder / rel
        if path.is_file() and path.stat().st_nlink > 1:
            tmp = path.with_name(path.name + ".detach")
            shutil.copy2(path, tmp)
            tmp.replace(path)


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copy2(src, dst)


@dataclass(frozen=True)
class Source:
    """A succeeded stage of an earlier run that a new run can take over."""

    run_dir: Path
    entry: dict[str, Any]

    def located(self, stage: Stage) -> dict[str, Path]:
        return {rel: self.run_dir / rel for rel in stage.writes}


@dataclass
class Reuser:
    """Input hashes of one run's stages and, when ``enabled``, the earlier runs of the
    same experiment (read once) to take unchanged stages from."""

    cfg: Config
    folder: Path
    enabled: bool
    ingest_selected: bool = True
    mlfolio_hash: str = field(default_factory=lambda: package_source_hash())
    packages: dict[str, str] = field(default_factory=lambda: package_versions())
    source_hash: str | None = None
    earlier: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ingest_selected:
            try:
                self.source_hash = source_hash(self.cfg.data)
            except (OSError, MlfolioError) as exc:  # ingest fails on it, naming the cause
                log.info("data source not hashed (%s): ingest will not be reused", exc)
        if self.enabled:
            self.earlier = _earlier_runs(self.folder, self.cfg.experiment)

    def inputs(
        self,
        stage: Stage,
        champion: str | None = None,
        located: Mapping[str, Path] | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """The stage's inputs (with ``hash``) as it would run now in this folder."""
        external = external_state(stage, self.cfg, source or self.source_hash, champion)
        return stage_inputs(
            stage, self.cfg, self.folder, self.mlfolio_hash, external, self.packages, located
        )

    def find(self, stage: Stage, inputs: dict[str, Any]) -> Source | None:
        """The newest succeeded, intact stage of an earlier run with exactly these inputs."""
        if not self.enabled or not stage.reusable:
            return None
        if stage.reads_source and self.source_hash is None:
            return None
        found = [
            (entry.get("started") or "", folder.name, folder, entry)
            for folder, manifest in self.earlier
            if (entry := (manifest.get("stages") or {}).get(stage.name))
            and entry.get("status") == "succeeded"
            and entry.get("inputs_hash") == inputs["hash"]
            and not entry.get("stale")
        ]
        for *_, folder, entry in sorted(found, key=lambda f: f[:2], reverse=True):
            if _intact(stage, folder, entry):
                return Source(folder, entry)
        return None

    def plan(self, selected: list[Stage]) -> int:
        """How many leading stages of ``selected`` will likely be reused, foreseen without
        side effects or registry reads (a stage reading the champion counts when an
        earlier run has it for a champion version it recorded): kernels are started only
        for the stages after them."""
        located: dict[str, Path] = {}
        for n, stage in enumerate(selected):
            champions = [None]
            if stage.reads_champion:
                champions = list(self._recorded_champions(stage))
            source = next(
                (
                    found
                    for champion in champions
                    if (found := self.find(stage, self.inputs(stage, champion, located)))
                ),
                None,
            )
            if source is None:
                return n
            located.update(source.located(stage))
        return len(selected)

    def _recorded_champions(self, stage: Stage) -> set[str | None]:
        return {
            ((entry.get("inputs") or {}).get("external") or {}).get("champion")
            for _, manifest in self.earlier
            if (entry := (manifest.get("stages") or {}).get(stage.name))
        }

    def take(self, stage: Stage, source: Source) -> StageEntry:
        """Link (else copy) the source's files into this run folder; the manifest entry."""
        t0 = time.perf_counter()
        for rel in stage_files(stage):
            _place(source.run_dir / rel, self.folder / rel, link=True)
        for rel in stage.in_place:
            if (source.run_dir / rel).exists():
                _place(source.run_dir / rel, self.folder / rel, link=False)
        old = StageEntry.model_validate(source.entry)
        return StageEntry.reused(
            stage.notebook, old, source.run_dir, round(time.perf_counter() - t0, 3)
        )


def _earlier_runs(folder: Path, experiment: str) -> list[tuple[Path, dict[str, Any]]]:
    """Training run folders of ``experiment`` beside ``folder`` (its runs root)."""
    runs = []
    for path in folder.parent.glob("*/manifest.json"):
        other = path.parent
        if other.resolve() == folder.resolve():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable or half-written by hand: not a source
            continue
        if data.get("experiment") == experiment and data.get("kind", "training") == "training":
            runs.append((other, data))
    return runs


def _intact(stage: Stage, folder: Path, entry: dict[str, Any]) -> bool:
    """Every file of the stage is there with the content it had when the stage ended."""
    recorded = entry.get("outputs") or {}
    for rel in stage_files(stage):
        path = folder / rel
        if rel not in recorded or not path.is_file() or file_hash(path) != recorded[rel]:
            log.info("%s of %s changed or missing: not reused", rel, folder.name)
            return False
    return True
