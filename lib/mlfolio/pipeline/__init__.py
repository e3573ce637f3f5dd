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

The stage graph they run (stages, notebooks, parameter sections) is :mod:`mlfolio.graph`,
below the stages, so a stage's context can name the stage that writes a missing file.
"""

from mlfolio.graph import (
    MONITOR_STAGES,
    PIPELINES,
    REFERENCE_DATA,
    STAGE_NAMES,
    STAGES,
    Stage,
    new_run_dir,
    notebooks_dir,
    select_stages,
)
from mlfolio.pipeline.engine import KERNEL_LOOKAHEAD, WarmKernel, execute_stage
from mlfolio.pipeline.loop import monitor
from mlfolio.pipeline.manifest import Manifest, StageEntry
from mlfolio.pipeline.provenance import (
    KEY_PACKAGES,
    file_hash,
    git_info,
    notebook_source_hash,
    package_source_hash,
    package_versions,
    stage_inputs,
)
from mlfolio.pipeline.runner import run

__all__ = [
    "KERNEL_LOOKAHEAD",
    "KEY_PACKAGES",
    "MONITOR_STAGES",
    "PIPELINES",
    "REFERENCE_DATA",
    "STAGES",
    "STAGE_NAMES",
    "Manifest",
    "Stage",
    "StageEntry",
    "WarmKernel",
    "execute_stage",
    "file_hash",
    "git_info",
    "monitor",
    "new_run_dir",
    "notebook_source_hash",
    "notebooks_dir",
    "package_source_hash",
    "package_versions",
    "run",
    "select_stages",
    "stage_inputs",
]
