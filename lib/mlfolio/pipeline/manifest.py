"""The run record, typed: ``manifest.json`` as a :class:`Manifest` of :class:`StageEntry`
per stage, each change one named transition (started, succeeded, failed, reused,
interrupted, not run, ...), the file rewritten atomically after every change.

The JSON on disk keeps its keys: unknown keys are kept (``extra="allow"``) and only the
keys a record was given are written, so a folder written by an older mlfolio reads and
writes back unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from mlfolio.errors import ConfigError, RecordError
from mlfolio.files import read_json, write_json

StageStatus = Literal["running", "succeeded", "failed", "interrupted", "not run", "skipped"]
RunStatus = Literal["running", "succeeded", "failed", "interrupted"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def html_of(notebook: str) -> str:
    return notebook.replace(".ipynb", ".html")


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def set(self, **fields: Any) -> None:
        """Assign fields (declared or not); each is then written. An undeclared key goes
        straight to the extras: the manifest's own ``data`` summary is not the property."""
        declared = type(self).model_fields
        for key, value in fields.items():
            if key in declared:
                setattr(self, key, value)
            else:
                self.__pydantic_extra__[key] = value

    def to_json(self) -> dict[str, Any]:
        """The record as written: only the keys it was given (no defaults added)."""
        return self.model_dump(mode="json", exclude_unset=True)


class StageEntry(_Record):
    """One stage's entry in ``manifest.json``."""

    status: StageStatus
    notebook: str | None = None
    html: str | None = None
    started: str | None = None
    duration_s: float | None = None
    error: dict[str, Any] | None = None
    interrupted: dict[str, Any] | None = None
    reason: str | None = None
    parameters: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    inputs_hash: str | None = None
    outputs: dict[str, str] | None = None
    mlflow_run_id: str | None = None
    reused_from: dict[str, Any] | None = None
    stale: list[str] | None = None
    attempts: list[dict[str, Any]] | None = None  # the failed attempts before this one

    # -- constructors: how an entry comes to be
    @classmethod
    def running(cls, notebook: str, **ran_with: Any) -> StageEntry:
        """Executing now (``ran_with``: its parameters and overrides)."""
        return cls(status="running", notebook=notebook, started=now(), **ran_with)

    @classmethod
    def executing(cls, notebook: str) -> StageEntry:
        """One notebook's execution begins (the engine's entry: with its HTML page)."""
        return cls(status="running", notebook=notebook, html=html_of(notebook), started=now())

    @classmethod
    def not_run(cls, notebook: str | None, reason: str | None = None) -> StageEntry:
        entry = cls(status="not run", notebook=notebook)
        if reason is not None:
            entry.reason = reason
        return entry

    @classmethod
    def skipped(cls, notebook: str, reason: str) -> StageEntry:
        return cls(status="skipped", notebook=notebook, reason=reason)

    @classmethod
    def reused(
        cls, notebook: str, source: StageEntry, source_dir: Path, duration_s: float
    ) -> StageEntry:
        """Taken over from ``source`` (a succeeded entry of the run in ``source_dir``)."""
        origin = source.reused_from or {}
        return cls(
            status="succeeded",
            notebook=notebook,
            html=source.html or html_of(notebook),
            started=now(),
            duration_s=duration_s,
            mlflow_run_id=source.mlflow_run_id,
            reused_from={
                "run_dir": str(source_dir),
                "mlflow_run_id": source.mlflow_run_id,
                # the run that executed it (a reused stage can be reused again)
                "executed_in": origin.get("executed_in") or str(source_dir),
                "duration_s": origin.get("duration_s", source.duration_s),
            },
            outputs=dict(source.outputs or {}),
        )

    @classmethod
    def interrupted_in(
        cls, notebook: str, signal: str | None, cell_index: int | None, **more: Any
    ) -> StageEntry:
        """Stopped by ``signal`` (None: the runner itself was killed) in ``cell_index``."""
        return cls(
            status="interrupted",
            notebook=notebook,
            interrupted={"signal": signal, "cell_index": cell_index, **more},
        )

    # -- transitions of an existing entry
    def succeed(self) -> None:
        self.status = "succeeded"

    def fail(self, ename: str, evalue: str, cell_index: int | None = None, **more: Any) -> None:
        """Failed in ``cell_index`` (None: outside the cells: kernel, disk, store)."""
        self.status = "failed"
        self.error = {"cell_index": cell_index, **more, "ename": ename, "evalue": evalue}

    def time_out(self, timeout_s: float, setting: str, cell_index: int | None) -> None:
        """Stopped for running past its bound (``setting``: where the bound is set, e.g.
        ``stages.tune.timeout_s``): failed, as ``StageTimeout``; the dead kernel is ours."""
        where = f" in cell {cell_index}" if cell_index is not None else ""
        self.fail(
            "StageTimeout",
            f"the attempt ran past {setting} = {timeout_s:g} s and was stopped{where}",
            cell_index,
            timeout_s=timeout_s,
        )

    def as_attempt(self, number: int, notebook: str | None, html: str | None) -> dict[str, Any]:
        """This (failed) attempt as the stage's later entry lists it, with the names its
        notebook and page were kept under (None: not written)."""
        record = {"attempt": number, "status": self.status, "notebook": notebook, "html": html}
        kept = self.to_json()
        for key in ("started", "duration_s", "error", "interrupted", "mlflow_run_id"):
            if key in kept:
                record[key] = kept[key]
        return record

    def follows(self, attempts: list[dict[str, Any]]) -> None:
        """The failed attempts before this one (none: the stage ran once)."""
        if attempts:
            self.attempts = [*(self.attempts or []), *attempts]

    def interrupt(self, signal: str | None, cell_index: int | None, **more: Any) -> None:
        """Stopped by a signal: the dead kernel is our doing, not the stage's error."""
        if "error" in self.model_fields_set:
            self.model_fields_set.discard("error")
            self.error = None
            self.model_fields_set.discard("error")
        self.status = "interrupted"
        self.interrupted = {"signal": signal, "cell_index": cell_index, **more}

    def ran(self, parameters: dict[str, Any], overrides: dict[str, Any], inputs: dict[str, Any]):
        """What it ran with: its parameter sections, the overrides, its hashed inputs."""
        self.set(parameters=parameters, overrides=overrides, inputs=inputs)
        self.inputs_hash = inputs["hash"]

    def mark_stale(self, reasons: list[str]) -> None:
        """Kept from an earlier run although what it read changed (empty: not stale)."""
        if reasons:
            self.stale = reasons
        elif "stale" in self.model_fields_set:
            self.stale = None
            self.model_fields_set.discard("stale")


class Manifest(_Record):
    """``manifest.json``: the run's record, rewritten atomically after every change."""

    experiment: str | None = None
    kind: str = "training"
    run_dir: str | None = None
    created: str | None = None
    updated: str | None = None
    status: RunStatus | None = None
    stages: dict[str, StageEntry] = {}
    failed_stage: str | None = None
    failed_cell: int | None = None
    interrupted: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    mlflow: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    _path: Path = PrivateAttr()

    def __init__(self, path: Path, data: dict[str, Any] | None = None, /, **fields: Any):
        super().__init__(**{**(data or {}), **fields})
        self._path = Path(path)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def data(self) -> dict[str, Any]:
        """The record as a JSON document (a copy: change it through the transitions)."""
        return self.to_json()

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        path = run_dir / "manifest.json"
        if not path.exists():
            raise ConfigError(f"{run_dir}: no manifest.json; is this a run folder?")
        try:
            doc = read_json(path)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: not an mlfolio run manifest (not a JSON object)")
        try:
            return cls(path, doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: field {field}: {first['msg']}") from None

    @classmethod
    def new(
        cls, folder: Path, experiment: str, kind: str, created: str | None = None, **fields: Any
    ) -> Manifest:
        """A new run's record (``created``: when the run began, if not now; ``fields``:
        what an engine adds, e.g. its name)."""
        return cls(
            folder / "manifest.json",
            experiment=experiment,
            kind=kind,
            run_dir=str(folder),
            created=created or now(),
            stages={},
            **fields,
        )

    def save(self) -> None:
        """RecordError naming the file when it cannot be written (the old one stays)."""
        self.updated = now()
        try:
            write_json(self.path, self.to_json())
        except OSError as exc:
            raise RecordError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    # -- the stages
    def put(self, name: str, entry: StageEntry) -> StageEntry:
        self.stages = {**self.stages, name: entry}
        return entry

    def running_stages(self) -> list[str]:
        return [name for name, entry in self.stages.items() if entry.status == "running"]

    def not_run(self, stages: Any) -> None:
        """``stages`` (with ``name`` and ``notebook``) did not run after a failure or stop."""
        for stage in stages:
            self.put(stage.name, StageEntry.not_run(stage.notebook))

    # -- the run
    def begin(self, run_info: dict[str, Any], at: str | None = None, **fields: Any) -> None:
        """An attempt begins (``at``, if not now): ``running``, an earlier attempt's
        outcome cleared."""
        self.set(status="running", interrupted=None, failure=None, **fields)
        self.history = [*self.history, {"at": at or now(), **run_info}]

    def reported(self, entries: dict[str, StageEntry]) -> None:
        """The stages as an engine that ran them all (kfp-local) reports them after the
        fact: one entry per stage, in the order given."""
        self.stages = {**self.stages, **entries}

    def ended(
        self, failed: str | None, cell_index: int | None, interrupted: dict[str, Any] | None
    ) -> None:
        """The run's outcome once its stages are recorded: ``interrupted`` (the signal's
        record) over ``failed`` (the first stage that did not succeed) over succeeded."""
        if interrupted is not None:
            self.interrupt(interrupted)
        elif failed is not None:
            self.stage_failed(failed, cell_index)
        else:
            self.succeed()

    def set_mlflow(self, **fields: Any) -> None:
        self.mlflow = {**self.mlflow, **fields}

    def succeed(self) -> None:
        self.set(status="succeeded", failed_stage=None, failed_cell=None)

    def stage_failed(self, name: str, cell_index: int | None, later: Any = ()) -> None:
        self.set(status="failed", failed_stage=name, failed_cell=cell_index)
        self.not_run(later)

    def interrupt(self, info: dict[str, Any]) -> None:
        """Stopped by a signal (``info``: signal, stage, cell_index, resume_from, ...)."""
        self.set(status="interrupted", failed_stage=None, failed_cell=None)
        self.interrupted = {**info, "at": info.get("at") or now()}

    def forced_stop(self, signal: str) -> bool:
        """The second signal: what still says ``running`` interrupted; False when the run
        is recorded already."""
        if self.status != "running":
            return False
        for name in self.running_stages():
            self.stages[name].interrupt(signal, None)
        self.set(
            status="interrupted",
            interrupted={
                "signal": signal,
                "stage": None,
                "cell_index": None,
                "forced": True,
                "at": now(),
            },
        )
        return True

    def abandoned(self) -> bool:
        """A runner killed outright left the record ``running``: what was running is
        ``interrupted`` (no signal); False when the record was not left running."""
        if self.status != "running":
            return False
        stages = self.running_stages()
        for name in stages:
            self.stages[name].interrupt(
                None, None, why="the runner ended without recording this stage (killed)"
            )
        self.set(
            status="interrupted",
            interrupted={
                "signal": None,
                "stage": stages[0] if stages else None,
                "cell_index": None,
                "at": self.updated,
                "why": "the runner ended without recording the run",
            },
        )
        return True

    def fail(self, exc: BaseException, cause: str) -> None:
        """Failed while recording (or outside any stage): ``failed`` with the cause, never
        left ``running`` or ``succeeded``; a stage still running failed."""
        if self.status in (None, "running", "succeeded"):
            running = self.running_stages()
            for name in running:
                self.stages[name].fail(type(exc).__name__, cause)
            self.set(
                status="failed", failed_stage=running[0] if running else None, failed_cell=None
            )
        self.failure = {"error": type(exc).__name__, "cause": cause, "at": now()}
