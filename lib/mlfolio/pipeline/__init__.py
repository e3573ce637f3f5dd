"""Running the stage notebooks: the runner, one stage's execution on a (warm) kernel,
provenance and the typed manifest, signals, the run lock and re-runs, the monitoring
loop, the report.

``mlfolio.pipeline.run`` and ``mlfolio.pipeline.monitor`` are what the CLI calls; the
modules behind them:

- ``runner``: ``run`` — validate, execute the selected stages, record, write the index
- ``engine``: one notebook on a kernel started and warmed ahead of its stage (papermill)
- ``provenance``: input hashes, git and package versions
- ``manifest``: ``manifest.json`` typed: the run's and each stage's transitions
- ``reuse``: taking unchanged stages over from earlier runs of the experiment
- ``signals``: SIGINT/SIGTERM stop what a run started; the ``interrupted`` record
- ``runlock``: the run folder's lock, and the runs a killed runner abandoned
- ``parameters``: each stage's parameter sections; re-runs with others refused or marked stale
- ``loop``: ``monitor`` — the monitor notebooks, then the A/B action and retraining
- ``report``: each executed notebook as HTML, and the run's ``index.html``
- ``engines``: the engines ``mlfolio run --engine`` picks from, behind one interface

The stage graph they run (stages, notebooks, parameter sections) is :mod:`mlfolio.graph`,
below the stages, so a stage's context can name the stage that writes a missing file.

The names below load their module on first use (PEP 562): ``mlfolio run --help`` reads
the engine registry without loading the runner.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "mlfolio.pipeline.engine": ("KERNEL_LOOKAHEAD", "WarmKernel", "execute_stage"),
    "mlfolio.graph": (
        "MONITOR_STAGES",
        "PIPELINES",
        "REFERENCE_DATA",
        "STAGES",
        "STAGE_NAMES",
        "Stage",
        "new_run_dir",
        "notebooks_dir",
        "select_stages",
    ),
    "mlfolio.pipeline.loop": ("monitor",),
    "mlfolio.pipeline.manifest": ("Manifest", "StageEntry"),
    "mlfolio.pipeline.provenance": (
        "KEY_PACKAGES",
        "file_hash",
        "git_info",
        "notebook_source_hash",
        "package_source_hash",
        "package_versions",
        "stage_inputs",
    ),
    "mlfolio.pipeline.runner": ("run",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value
