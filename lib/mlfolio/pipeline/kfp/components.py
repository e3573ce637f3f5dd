"""The pipeline's lightweight Python components. kfp ships each function's source to its
pod, so a body only imports :mod:`mlfolio.pipeline.kfp.steps` (installed in the image)
and calls one function there; the logic is tested as normal Python.

Each stage takes the ``products`` artifacts (folders) of the stages it declares it reads
from (``Stage.reads``: tests check the signatures against them) and writes its own
``products`` folder, the executed notebook as ``notebook`` (HTML) and its ``metrics``.
(No ``from __future__ import annotations`` here: kfp reads the annotations as types.)
"""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Input, Metrics, Output, PipelineTaskFinalStatus


def start(params: str, job_id: str, run_name: str) -> NamedTuple(
    "Run", [("parent_run_id", str), ("run_name", str), ("study_name", str)]
):
    from collections import namedtuple

    from mlfolio.pipeline.kfp import steps

    out = steps.start_run(params, job_id, run_name)
    return namedtuple("Run", list(out))(**out)


def finish(params: str, job_id: str, status: PipelineTaskFinalStatus):
    from mlfolio.pipeline.kfp import steps

    steps.finish_run(params, job_id, status.state)


def ingest(
    params: str,
    parent_run_id: str,
    products: Output[Artifact],
    notebook: Output[HTML],
    metrics: Output[Metrics],
):
    from mlfolio.pipeline.kfp import steps

    steps.run_stage(
        "ingest", params, parent_run_id, [], products.path, notebook.path, metrics.log_metric
    )


def preprocess(
    params: str,
    parent_run_id: str,
    ingest: Input[Artifact],
    products: Output[Artifact],
    notebook: Output[HTML],
    metrics: Output[Metrics],
):
    from mlfolio.pipeline.kfp import steps

    upstream = [ingest.path]
    steps.run_stage(
        "preprocess",
        params,
        parent_run_id,
        upstream,
        products.path,
        notebook.path,
        metrics.log_metric,
    )


def train(
    params: str,
    parent_run_id: str,
    preprocess: Input[Artifact],
    products: Output[Artifact],
    notebook: Output[HTML],
    metrics: Output[Metrics],
):
    from mlfolio.pipeline.kfp import steps

    upstream = [preprocess.path]
    steps.run_stage(
        "train",
        params,
        parent_run_id,
        upstream,
        products.path,
        notebook.path,
        metrics.log_metric,
    )


def tune_worker(
    params: str, run_name: str, job_id: str, worker: int, preprocess: Input[Artifact]
) -> int:
    from mlfolio.pipeline.kfp import steps

    return steps.tune_worker(params, run_name, job_id, worker, preprocess.path)


def tune(
    params: str,
    parent_run_id: str,
    study_name: str,
    fanned_out: bool,
    preprocess: Input[Artifact],
    products: Output[Artifact],
    notebook: Output[HTML],
    metrics: Output[Metrics],
):
    from mlfolio.pipeline.kfp import steps

    # The workers ran the trials; this stage reads the study and refits the best one.
    # Should trials be missing (a worker died), it runs them itself, in this one process.
    overrides = {"tuning.study_name": study_name}
    if fanned_out:
        overrides["tuning.n_workers"] = 1
    steps.run_stage(
        "tune",
        params,
        parent_run_id,
        [preprocess.path],
        products.path,
        notebook.path,
        metrics.log_metric,
        overrides,
    )


def evaluate(
    params: str,
    parent_run_id: str,
    ingest: Input[Artifact],
    preprocess: Input[Artifact],
    train: Input[Artifact],
    tune: Input[Artifact],
    products: Output[Artifact],
    notebook: Output[HTML],
    metrics: Output[Metrics],
) -> bool:
    """Returns whether the gate passed (one unnamed output: kfp's local runner resolves
    only ``Output`` in a dsl.If condition, and skips the branch on a named one)."""
    from mlfolio.pipeline.kfp import steps

    upstream = [ingest.path, preprocess.path, train.path, tune.path]
    steps.run_stage(
        "evaluate",
        params,
        parent_run_id,
        upstream,
        products.path,
        notebook.path,
        metrics.log_metric,
    )
    return steps.gate_passed(products.path)


def register(
    params: str,
    parent_run_id: str,
    ingest: Input[Artifact],
    preprocess: Input[Artifact],
    evaluate: Input[Artifact],
    products: Output[Artifact],
    notebook: Output[HTML],
    metrics: Output[Metrics],
):
    from mlfolio.pipeline.kfp import steps

    upstream = [ingest.path, preprocess.path, evaluate.path]
    steps.run_stage(
        "register",
        params,
        parent_run_id,
        upstream,
        products.path,
        notebook.path,
        metrics.log_metric,
    )


def deploy(
    params: str,
    parent_run_id: str,
    preprocess: Input[Artifact],
    products: Output[Artifact],
    notebook: Output[HTML],
    metrics: Output[Metrics],
):
    from mlfolio.pipeline.kfp import steps

    upstream = [preprocess.path]
    steps.run_stage(
        "deploy",
        params,
        parent_run_id,
        upstream,
        products.path,
        notebook.path,
        metrics.log_metric,
    )


STAGE_COMPONENTS = {
    "ingest": ingest,
    "preprocess": preprocess,
    "train": train,
    "tune": tune,
    "evaluate": evaluate,
    "register": register,
    "deploy": deploy,
}
