"""The engines a run executes on, behind one interface: ``mlfolio run --engine NAME``
picks one from :data:`ENGINES` and :func:`run` drives it (its checks before anything
starts, then the run).

- ``papermill`` (default): driven by the runner one stage at a time
  (:func:`mlfolio.pipeline.runner.run`, which calls its :meth:`Papermill.stage_engine`
  for each stage's attempts): warm kernels, re-runs, resumes, reuse, retries and
  timeouts into a run folder
- ``kfp-local``: the compiled Kubeflow pipeline on kfp's local runner, then the same
  audit folder (:func:`mlfolio.pipeline.kfp.local.run_local`). A whole-run engine: kfp
  orchestrates the tasks itself (artifacts between task folders, ``dsl.If``,
  ``ParallelFor``, ``set_retry``), so the runner cannot drive it stage by stage without
  becoming a second orchestrator that no cluster runs
- ``kfp``: one submission to a Kubeflow Pipelines endpoint (``--kfp-host``)

A new engine is a class with the members of :class:`Engine`, added with
:func:`register`. One that executes a single stage at a time (a stage notebook in a
container, a managed job) also gives :meth:`StageByStage.stage_engine`, and its ``run``
hands it to the runner (as :class:`Papermill` does): ordering, reuse, retries, timeouts,
signals and the record then come from the runner. One that submits the whole chain to an
orchestrator of its own (Kubeflow, SageMaker Pipelines) maps those to its orchestrator's
(``set_retry``, ``RetryPolicy``) and assembles the record after, as kfp-local does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mlfolio.errors import ConfigError

if TYPE_CHECKING:  # the registry loads without the engines' modules (``run --help``)
    from mlfolio.pipeline.engine import StageEngine


@dataclass(frozen=True)
class RunRequest:
    """What ``mlfolio run`` was asked, whatever the engine."""

    params_file: str | Path
    overrides: dict[str, Any] = field(default_factory=dict)
    stages: list[str] | None = None
    from_stage: str | None = None
    run_dir: str | Path | None = None
    runs_root: Path | None = None
    force: bool = False
    reuse: bool = True
    kfp_host: str | None = None
    echo: Callable[[str], None] = print
    progress: Callable[[str], None] | None = None

    def part_of_a_run(self) -> bool:
        """Asks for a re-run or resume of an existing folder (or to force one)."""
        return bool(self.stages or self.from_stage or self.run_dir or self.force)


@runtime_checkable
class Engine(Protocol):
    """One way of executing the pipeline's stages into a run's record."""

    name: str
    summary: str  # one line for ``--help``

    def check(self, request: RunRequest) -> None:
        """ConfigError for what this engine cannot do, before anything starts."""
        ...

    def run(self, request: RunRequest) -> Any:
        """Execute the run: its manifest (or the remote run's id)."""
        ...


@runtime_checkable
class StageByStage(Engine, Protocol):
    """An engine the runner drives one stage at a time."""

    def stage_engine(
        self, folder: Path, tracking_uri: str, sigs: Any, warm: bool, to_execute: int
    ) -> StageEngine:
        """What executes the run's stages in ``folder`` (``sigs``: the run's signal
        handler, which must be able to stop an attempt at once; ``to_execute``: how many
        stages the run will execute)."""
        ...


HOST_ONLY_FOR_KFP = "--kfp-host URL goes with --engine kfp (and only with it)"


def _no_host(request: RunRequest) -> None:
    if request.kfp_host:
        raise ConfigError(HOST_ONLY_FOR_KFP)


def _whole_chain(engine: str, request: RunRequest) -> None:
    if request.part_of_a_run():
        raise ConfigError(
            f"--engine {engine} runs the whole chain into a new run folder: "
            "--stages, --from, --run-dir and --force are for --engine papermill"
        )


def needs_kfp() -> None:
    """ConfigError when kfp (the ``mlfolio[kfp]`` extra) is not installed."""
    try:
        import kfp  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the Kubeflow Pipelines engine needs kfp: pip install 'mlfolio[kfp]'"
        ) from None


def needs_sagemaker() -> None:
    """ConfigError when the SageMaker SDK (the ``mlfolio[aws]`` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("sagemaker.mlops") is None:
        raise ConfigError(
            "compile sagemaker needs the SageMaker Python SDK: pip install 'mlfolio[aws]'"
        )


def _kfp() -> Any:
    """mlfolio.pipeline.kfp.local (kfp checked first)."""
    needs_kfp()
    from mlfolio.pipeline.kfp import local

    return local


class Papermill:
    """Each stage notebook on a kernel of this process's, warmed ahead of its stage."""

    name = "papermill"
    summary = "the stages in this process's kernels"

    def check(self, request: RunRequest) -> None:
        _no_host(request)

    def stage_engine(
        self, folder: Path, tracking_uri: str, sigs: Any, warm: bool, to_execute: int
    ) -> StageEngine:
        from mlfolio.pipeline.engine import WarmKernels

        return WarmKernels(folder, tracking_uri, sigs, warm, to_execute)

    def run(self, request: RunRequest) -> Any:
        from mlfolio import pipeline  # (as the package exports it: tests replace it)

        return pipeline.run(
            request.params_file,
            overrides=request.overrides,
            stages=request.stages,
            from_stage=request.from_stage,
            run_dir=request.run_dir,
            runs_root=request.runs_root,
            echo=request.echo,
            force=request.force,
            reuse=request.reuse,
            progress=request.progress,
            stage_engine=self.stage_engine,
        )


class KfpLocal:
    name = "kfp-local"
    summary = "the compiled Kubeflow pipeline on kfp's local runner, each task in its own folder"

    def check(self, request: RunRequest) -> None:
        _no_host(request)
        _whole_chain(self.name, request)
        _kfp()

    def run(self, request: RunRequest) -> Any:
        return _kfp().run_local(
            request.params_file, request.overrides, request.runs_root, echo=request.echo
        )


class KfpSubmit:
    name = "kfp"
    summary = "submit it to --kfp-host (needs the mlfolio[kfp] extra)"

    def check(self, request: RunRequest) -> None:
        if not request.kfp_host:
            raise ConfigError(HOST_ONLY_FOR_KFP)
        _whole_chain(self.name, request)
        _kfp()

    def run(self, request: RunRequest) -> Any:
        return _kfp().submit(
            request.params_file, request.overrides, request.kfp_host, echo=request.echo
        )


ENGINES: dict[str, Engine] = {e.name: e for e in (Papermill(), KfpLocal(), KfpSubmit())}
DEFAULT = "papermill"


def register(engine: Engine) -> None:
    """Make ``engine`` a choice of ``--engine``."""
    if not isinstance(engine, Engine):
        raise TypeError(f"{engine!r} is not an Engine (name, summary, check, run)")
    ENGINES[engine.name] = engine


def get(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(
            f"unknown engine {name!r}: --engine takes one of {', '.join(ENGINES)}"
        ) from None


def run(name: str, request: RunRequest) -> Any:
    """Drive the engine ``name``: its checks, then the run."""
    engine = get(name)
    if (request.stages or request.from_stage) and not request.run_dir:
        raise ConfigError("--stages/--from re-run part of a run: give its --run-dir too")
    engine.check(request)
    return engine.run(request)
