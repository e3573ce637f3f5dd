"""The stage chain on Kubeflow Pipelines v2: the compiled spec (read back with the kfp
SDK), what compile refuses, the task bodies as plain functions, the project Dockerfile,
and one end-to-end run on kfp's local runner against the team services."""

from __future__ import annotations

import builtins
import json
import os
import re
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from mlfolio import cli, config, products
from mlfolio.errors import ConfigError, StageError
from mlfolio.graph import STAGE_NAMES, STAGES
from mlfolio.pipeline.manifest import StageEntry

from .conftest import CHURN_CSV, CHURN_PARAMS, ROOT, SMALL, deep_update, require_module

kfp = require_module("kfp", "the kfp extra (mlfolio[kfp]) compiles and runs the pipeline")
from kfp import components  # noqa: E402

from mlfolio.pipeline.kfp import local, spec, steps  # noqa: E402

PG_STORAGE = "postgresql+psycopg://postgres@127.0.0.1:5432/optuna"
TEAM = {
    "tracking": {"tracking_uri": "http://mlflow.team.example:5000"},
    "tuning": {"n_workers": 2, "storage": PG_STORAGE},
    "kfp": {
        "image": "registry.example/mlfolio:1.2",
        "resources": {"tune_worker": {"cpu": "2", "memory": "4Gi"}, "evaluate": {"cpu": "500m"}},
    },
}


@pytest.fixture
def team_params(write_params):
    """A parameter file fit for a cluster: a tracking server, a shared study database."""
    return write_params("team.yaml", **TEAM)


def compile_spec(params: Path, tmp_path: Path, *overrides: str, name: str = "p.yaml") -> Path:
    out = tmp_path / name
    args = ["compile", "kfp", str(params), "-o", str(out)]
    for item in overrides:
        args += ["-p", item]
    assert cli.main(args) == 0
    return out


def dag(component) -> dict:
    """Every task of the pipeline, nested DAGs (exit handler, loop, condition) flattened:
    task name -> (its DAG's component name, the task spec)."""
    ps = component.pipeline_spec
    found = {name: ("root", t) for name, t in ps.root.dag.tasks.items()}
    for comp_name, comp in ps.components.items():
        for name, t in comp.dag.tasks.items():
            found[name] = (comp_name, t)
    return found


def producer(tasks: dict, task_name: str, artifact: str) -> str:
    """The task whose output feeds ``artifact`` of ``task_name``, through the inputs of
    the nested DAGs (condition, exit handler) it sits in."""
    comp_name, spec_task = tasks[task_name]
    source = spec_task.inputs.artifacts[artifact]
    if source.task_output_artifact.producer_task:
        return source.task_output_artifact.producer_task
    outer = next(n for n in tasks if f"comp-{n}" == comp_name)  # the task running that DAG
    return producer(tasks, outer, source.component_input_artifact)


# -- the compiled spec ------------------------------------------------------------------
def test_compiled_spec_has_a_task_per_stage_the_fan_out_and_the_gate(team_params, tmp_path):
    pipeline = components.load_component_from_file(str(compile_spec(team_params, tmp_path)))
    assert pipeline.name == "mlfolio-churn"
    assert set(pipeline.component_spec.inputs) == {"params", "run_name"}
    tasks = dag(pipeline)
    assert set(STAGE_NAMES) | {"start", "finish", "tune-worker"} <= set(tasks)

    # tuning fanned out: tune-worker in a ParallelFor over the two workers, before tune
    loop_comp, _ = tasks["tune-worker"]
    loop_task = next(t for n, (_, t) in tasks.items() if f"comp-{n}" == loop_comp)
    assert json.loads(loop_task.parameter_iterator.items.raw) == [0, 1]
    assert any(d.startswith("for-loop") for d in tasks["tune"][1].dependent_tasks)
    # no task-output parameter enters the loop (kfp's local runner would put the loop
    # item in its place): the workers derive the study name from pipeline inputs
    assert not [
        name
        for name, value in loop_task.inputs.parameters.items()
        if value.HasField("task_output_parameter")
    ]
    # the gate: register and deploy inside dsl.If on evaluate's verdict
    cond_comp, _ = tasks["register"]
    assert tasks["deploy"][0] == cond_comp
    cond_task = next(t for n, (_, t) in tasks.items() if f"comp-{n}" == cond_comp)
    assert "evaluate" in cond_task.trigger_policy.condition
    assert cond_task.trigger_policy.condition.endswith("== true")
    # the exit handler: finish runs whatever happened inside
    assert tasks["finish"][1].trigger_policy.strategy == 2  # ALL_UPSTREAM_TASKS_COMPLETED
    assert tasks["start"][0] == tasks["ingest"][0] == "comp-exit-handler-1"
    # artifacts hand over, not a shared disk: each stage's task takes the products folders
    # of exactly the stages whose products it declares it reads (Stage.reads), and waits
    # for those it declares it comes after (deploy: register, through the registry)
    ev_inputs = tasks["evaluate"][1].inputs.artifacts
    assert set(ev_inputs) == {"ingest", "preprocess", "train", "tune"}
    for stage in STAGES:
        spec_task = tasks[stage.name][1]
        edges = {n: producer(tasks, stage.name, n) for n in spec_task.inputs.artifacts}
        assert edges == {name: name for name in stage.upstream}, stage.name
        assert set(stage.after) <= set(spec_task.dependent_tasks), stage.name
    assert tasks["deploy"][1].dependent_tasks == ["register"]
    outputs = pipeline.pipeline_spec.components["comp-ingest"].output_definitions.artifacts
    assert outputs["notebook"].artifact_type.schema_title == "system.HTML"
    assert outputs["metrics"].artifact_type.schema_title == "system.Metrics"


def test_image_resources_and_caching_come_from_the_parameters(team_params, tmp_path):
    text = compile_spec(team_params, tmp_path).read_text()
    doc = list(yaml.safe_load_all(text))[0]
    executors = doc["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/mlfolio:1.2"}
    worker = executors["exec-tune-worker"]["container"]["resources"]
    assert worker == {"cpuRequest": 2.0, "resourceCpuRequest": "2", "memoryRequest": 4.294967296,
                      "resourceMemoryRequest": "4Gi"}  # fmt: skip
    assert executors["exec-evaluate"]["container"]["resources"]["resourceCpuRequest"] == "500m"
    assert "resources" not in executors["exec-train"]["container"]
    # every task's body only imports mlfolio and calls its function
    assert (
        "from mlfolio.pipeline.kfp import steps"
        in executors["exec-train"]["container"]["command"][-1]
    )
    for task in dag(components.load_component_from_text(text)).values():
        if (
            task[1].component_ref.name.startswith("comp-")
            and "dag" not in task[1].component_ref.name
        ):
            assert task[1].caching_options.enable_cache is False


def test_a_parameter_change_changes_the_spec(team_params, tmp_path):
    base = compile_spec(team_params, tmp_path, name="a.yaml")
    again = compile_spec(team_params, tmp_path, name="b.yaml")
    changed = compile_spec(team_params, tmp_path, "tuning.n_trials=7", name="c.yaml")
    assert base.read_text() == again.read_text()  # deterministic
    assert changed.read_text() != base.read_text()

    def default_params(path: Path) -> dict:
        pipe = components.load_component_from_file(str(path))
        return json.loads(pipe.component_spec.inputs["params"].default)

    assert default_params(base)["tuning"]["n_trials"] == SMALL["tuning"]["n_trials"]
    assert default_params(changed)["tuning"]["n_trials"] == 7
    # what the tasks receive is valid parameters, paths relative to the image's project
    params = default_params(changed)
    config.from_mapping(params)
    assert params["data"]["uri"] == "data/telco_churn.csv"


def test_more_workers_more_loop_items(team_params, tmp_path):
    pipe = components.load_component_from_file(
        str(compile_spec(team_params, tmp_path, "tuning.n_workers=3"))
    )
    (loop,) = [t for n, (_, t) in dag(pipe).items() if n.startswith("for-loop")]
    assert json.loads(loop.parameter_iterator.items.raw) == [0, 1, 2]
    one = components.load_component_from_file(
        str(compile_spec(team_params, tmp_path, "tuning.n_workers=1", name="one.yaml"))
    )
    assert not any(n.startswith("for-loop") for n in dag(one))  # tune runs its study alone


# -- what compile refuses ---------------------------------------------------------------
@pytest.mark.parametrize(
    "storage, expected",
    [
        (None, "a journal file in each task folder"),
        ("sqlite:////tmp/optuna.db", "workers in other pods cannot open it"),
    ],
)
def test_compile_refuses_a_study_the_workers_cannot_share(
    write_params, tmp_path, capsys, storage, expected
):
    params = write_params(**deep_update(TEAM, {"tuning": {"storage": storage}}))
    assert cli.main(["compile", "kfp", str(params), "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "tuning.storage" in err
    assert expected in err and str(params) in err
    assert not (tmp_path / "x.yaml").exists()


def test_compile_refuses_a_local_tracking_store(write_params, tmp_path, capsys):
    params = write_params(tuning=TEAM["tuning"])  # the sqlite store of the test fixture
    assert cli.main(["compile", "kfp", str(params), "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "tracking.tracking_uri" in err and "sqlite:///" in err and "pods" in err


def test_compile_takes_the_tracking_server_from_the_environment(
    write_params, tmp_path, monkeypatch
):
    params = write_params(tracking={"tracking_uri": None}, tuning=TEAM["tuning"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example")
    out = compile_spec(params, tmp_path)
    default = components.load_component_from_file(str(out)).component_spec.inputs["params"]
    assert json.loads(default.default)["tracking"]["tracking_uri"] == "https://mlflow.example"


def test_every_task_takes_resource_requests_and_no_other_name_is_taken(
    write_params, tmp_path, capsys
):
    # the names compile accepts are exactly the pipeline's tasks, each given its request
    names = spec.tasks()
    resources = {name: {"cpu": "300m"} for name in names}
    params = write_params("all.yaml", **deep_update(TEAM, {"kfp": {"resources": resources}}))
    doc = yaml.safe_load(compile_spec(params, tmp_path).read_text())
    requested = {
        name.removeprefix("exec-")
        for name, e in doc["deploymentSpec"]["executors"].items()
        if e["container"].get("resources", {}).get("resourceCpuRequest") == "300m"
    }
    assert requested == {name.replace("_", "-") for name in names}
    assert set(doc["deploymentSpec"]["executors"]) - {f"exec-{n}" for n in requested} == {
        "exec-start",
        "exec-finish",
    }
    # a name that is no task is refused when compiling, naming the key and the tasks
    typo = write_params("typo.yaml", **deep_update(TEAM, {"kfp": {"resources": {"tunes": {}}}}))
    assert cli.main(["compile", "kfp", str(typo), "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{typo}: kfp.resources.tunes: the pipeline has no such task" in err
    assert f"expected one of {', '.join(names)}" in err
    assert not (tmp_path / "x.yaml").exists()


def test_kfp_resources_are_kubernetes_quantities_naming_the_key():
    raw = yaml.safe_load((ROOT / "parameters" / "churn.yaml").read_text())
    with pytest.raises(ConfigError, match=r"kfp\.resources\.tune\.memory: expected a Kub"):
        config.from_mapping(deep_update(raw, {"kfp": {"resources": {"tune": {"memory": "4 GB"}}}}))


def test_run_engine_options_are_checked(write_params, runs_root, capsys):
    run = ["run", str(write_params()), "--runs-root", str(runs_root)]
    assert cli.main([*run, "--engine", "kfp-local", "--from", "train", "--run-dir", "x"]) == 2
    assert "--engine kfp-local runs the whole chain" in capsys.readouterr().err
    assert cli.main([*run, "--engine", "kfp"]) == 2
    assert "--kfp-host URL goes with --engine kfp" in capsys.readouterr().err
    assert cli.main([*run, "--kfp-host", "http://kfp"]) == 2  # not the default engine
    assert "--kfp-host URL goes with --engine kfp" in capsys.readouterr().err
    # the schema against the data's header, before any folder, as the default engine does
    assert cli.main([*run, "--engine", "kfp-local", "-p", "schema.target=churnn"]) == 2
    assert "schema.target: column 'churnn' is not in the data" in capsys.readouterr().err
    assert not any(runs_root.iterdir())


# -- the task bodies as plain functions -----------------------------------------------------
def test_load_params_names_the_pipeline_parameter():
    with pytest.raises(ConfigError, match="pipeline parameter 'params': not valid YAML"):
        steps.load_params("experiment: [unclosed")
    with pytest.raises(ConfigError, match=r"pipeline parameter 'params'.*\n  data: required"):
        steps.load_params('{"experiment": "x"}')


def test_workers_and_start_name_the_same_study():
    cfg = steps.load_params(CHURN_PARAMS.read_text())
    started = steps.study_name(cfg, "", "0123456789ab")
    assert started == "churn-churn-kfp-01234567"
    assert (
        steps.study_name(cfg, "20261130T1200Z-churn-abc", "x") == "churn-20261130T1200Z-churn-abc"
    )
    named = cfg.model_copy(update={"tuning": cfg.tuning.model_copy(update={"study_name": "s"})})
    assert steps.study_name(named, "", "j") == "s"


def test_a_stage_copies_only_declared_upstream_products_and_hands_over_its_own(tmp_path):
    up = tmp_path / "preprocess-artifact"
    (up / "data").mkdir(parents=True)
    (up / "data" / "train.parquet").write_bytes(b"rows")
    (up / "preprocess.json").write_text("{}")
    (up / "02_preprocess.ipynb").write_text("{}")  # a notebook is no product
    work = tmp_path / "work"
    work.mkdir()
    copied = steps._copy_upstream([str(up)], work)
    assert copied == {Path("data/train.parquet"), Path("preprocess.json")}
    assert not (work / "02_preprocess.ipynb").exists()
    (work / "train.json").write_text("{}")
    (work / "logs").mkdir()
    (work / "logs" / "kernel.log").write_text("x")
    out = tmp_path / "out"
    steps._hand_over(work, out, copied)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "logs/kernel.log",
        "train.json",
    ]


def test_run_stage_refuses_an_unknown_stage(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage 'tuning'; expected one of ingest"):
        steps.run_stage("tuning", "{}", "", [], str(tmp_path), str(tmp_path / "h"))


def test_gate_verdict_and_metrics_from_the_evaluate_product(tmp_path):
    with pytest.raises(StageError, match="no evaluate.json"):
        steps.gate_passed(str(tmp_path))
    doc = {
        "stage": "evaluate",
        "candidate": {"name": "m", "model_uri": "u", "run_id": "r", "valid": {}},
        "threshold": 0.4,
        "champion": None,
        "comparison": None,
        "gate": {"passed": False, "reasons": ["FAIL"]},
    }  # fmt: skip
    doc["candidate"]["test"] = {"roc_auc": 0.81}
    (tmp_path / products.EVALUATE.path).write_text(json.dumps(doc))
    assert steps.gate_passed(str(tmp_path)) is False
    assert steps.stage_metrics("evaluate", tmp_path) == {
        "test.roc_auc": 0.81,
        "threshold": 0.4,
        "gate_passed": 0.0,
    }
    assert steps.stage_metrics("train", tmp_path) == {}  # no train.json: nothing


def test_stage_records_gate_skip_and_failures():
    ok = {"status": "succeeded", "notebook": "n", "duration_s": 1.0}
    entries = {s.name: StageEntry(**ok) for s in STAGES[:5]}
    records, failed, _ = local._stage_records(entries)
    assert failed is None
    assert records["register"].status == records["deploy"].status == "skipped"
    entries["train"] = StageEntry(status="failed", error={"cell_index": 3}, notebook="n")
    del entries["evaluate"]
    records, failed, cell = local._stage_records(entries)
    assert (failed, cell) == ("train", 3)
    assert records["register"].status == "not run"
    # a task with no notebook (a tuning worker) failed: the first stage that never ran
    records, failed, _ = local._stage_records({s.name: StageEntry(**ok) for s in STAGES[:3]})
    assert failed == "tune" and "upstream task failed" in records["tune"].reason


# -- the Dockerfile ---------------------------------------------------------------------
def test_dockerfile_installs_the_project_and_copies_what_exists():
    dockerfile = require_module("dockerfile", "BuildKit's parser reads the Dockerfile")
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    order = [c.cmd for c in commands]
    assert order[0] == "FROM" and commands[0].value == ("python:3.11-slim",)
    env = {}
    for c in commands:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    workdirs = [c.value[0] for c in commands if c.cmd == "WORKDIR"]
    assert env["MLFOLIO_PROJECT_DIR"] == workdirs[0]  # where the project is copied
    copies = [c for c in commands if c.cmd == "COPY"]
    sources = [src for c in copies for src in c.value[:-1]]
    assert sources == [
        *("pyproject.toml", "constraints.txt", "README.md"),
        *("lib", "notebooks", "parameters", "data"),
    ]
    for source in sources:
        assert (ROOT / source).exists(), source
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and all(f"!{s}" in ignore for s in sources)
    pip = next(i for i, c in enumerate(commands) if c.cmd == "RUN" and "pip install" in c.value[0])
    assert '-c constraints.txt ".[kfp]"' in commands[pip].value[0]
    lib = next(i for i, c in enumerate(commands) if c.cmd == "COPY" and c.value[0] == "lib")
    notebooks = next(
        i for i, c in enumerate(commands) if c.cmd == "COPY" and "notebooks" in c.value
    )
    assert lib < pip < notebooks  # a notebook change keeps the dependency layer
    # every stage notebook the tasks run is in the copied folder
    assert all((ROOT / "notebooks" / s.notebook).exists() for s in STAGES)
    user = order.index("USER")
    assert "RUN" not in order[user:] and commands[user].value == ("10001:10001",)


# -- end to end -------------------------------------------------------------------------
@pytest.mark.slow
def test_kfp_local_runs_the_chain_against_the_team_services(team_env, tmp_path, capsys):
    """`mlfolio run --engine kfp-local`: every stage a kfp task in its own folder, two
    tuning workers on a PostgreSQL study, MLflow on the tracking server with S3
    artifacts; the registry ends with a champion and the run folder is a normal one."""
    from mlflow.tracking import MlflowClient

    name = f"kfp-e2e-{os.getpid()}"
    raw = yaml.safe_load((ROOT / "parameters" / "churn.yaml").read_text())
    raw = deep_update(raw, SMALL)
    raw = deep_update(
        raw,
        {
            "experiment": name,
            "data": {"uri": str(CHURN_CSV), "sample_rows": 1500},
            "tuning": {"n_workers": 2, "storage": team_env.new_database("kfp_optuna")},
            "registry": {"model_name": f"{name}-classifier"},
            "tracking": {"tracking_uri": team_env.tracking_uri, "ui_url": team_env.tracking_uri},
            "deploy": {"targets": ["local"]},
        },
    )
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    runs = tmp_path / "runs"
    t0 = time.perf_counter()
    print_before = builtins.print
    code = cli.main(["run", str(params), "--engine", "kfp-local", "--runs-root", str(runs)])
    err = capsys.readouterr().err
    # kfp.local's per-task print indentation must not outlive the run (it indented every
    # later line of the process, this test's verdict and the next tests' output)
    assert builtins.print is print_before
    assert "\n[1/7] ingest     ok in" in err, err[-2000:]  # not "\n    [1/7] ..."
    (run_dir,) = runs.iterdir()
    log_tail = (run_dir / "logs" / "kfp-local.log").read_text()[-4000:]
    assert code == 0, err + log_tail
    print(f"kfp-local chain: {time.perf_counter() - t0:.0f}s")

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["engine"] == "kfp-local" and manifest["status"] == "succeeded"
    assert [manifest["stages"][s]["status"] for s in STAGE_NAMES] == ["succeeded"] * 7
    assert manifest["gate"]["passed"] and manifest["model"]["promoted"]
    for stage in STAGES:
        html = stage.notebook.replace(".ipynb", ".html")
        assert (run_dir / stage.notebook).exists() and (run_dir / html).exists()
        assert manifest["stages"][stage.name]["inputs_hash"]
    assert (run_dir / "index.html").exists() and (run_dir / "pipeline.yaml").exists()
    assert "kfp-local" in err and f"run folder: {run_dir}" in err
    # the same verdict lines as the default engine, then the folder and the report
    model = f"{name}-classifier"
    assert err.strip().splitlines()[-6:] == [
        "gate:       passed: no champion yet: nothing to beat",
        f"model:      {model} version 1 (registered), holds @champion, @challenger",
        "champion:   version 1 (the first)",
        "deployed:   version 1 (@champion): local checked, then stopped",
        f"run folder: {run_dir}",
        f"report:     {run_dir / 'index.html'}",
    ], err[-2000:]
    for product in products.ALL:
        if product.stage in STAGE_NAMES:
            assert (run_dir / product.path).exists(), product.path

    client = MlflowClient(team_env.tracking_uri)
    champion = client.get_model_version_by_alias(f"{name}-classifier", "champion")
    assert champion.version == manifest["model"]["version"]
    parent = client.get_run(manifest["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"  # ended by the exit handler's task
    assert parent.data.tags["mlfolio.engine"] == "kfp"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "run")}
    assert {"run/04_tune.ipynb", "run/04_tune.html", "run/manifest.json"} <= logged
    # both workers ran trials of the one study the tune stage then read
    tune_doc = json.loads((run_dir / "tune.json").read_text())
    study = optuna.load_study(study_name=tune_doc["study_name"], storage=raw["tuning"]["storage"])
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == SMALL["tuning"]["n_trials"]
    assert tune_doc["study_name"] == f"{name}-{run_dir.name}"
    # the workers ran them (sampler seed = seed + 1 + worker), not the tune stage
    assert {t.user_attrs["worker_seed"] for t in finished} <= {raw["seed"] + 1, raw["seed"] + 2}
    log = re.sub(r"\x1b\[[0-9;]*m", "", (run_dir / "logs" / "kfp-local.log").read_text())
    assert log.count("Executing task 'tune-worker'") == 2  # in parallel; the run succeeded
    # the data the model was trained on is with the parent run (monitoring reads it there)
    data_files = {a.path for a in client.list_artifacts(parent.info.run_id, "data")}
    assert "data/train.parquet" in data_files
    assert not pd.read_parquet(run_dir / "data" / "train.parquet").empty


@pytest.mark.slow
def test_kfp_local_failure_ends_the_parent_run_failed(write_params, runs_root, capsys):
    """A stage that fails: the exit handler's task ends the MLflow parent run FAILED, the
    folder names the stage and cell, later stages are `not run`, the command exits 1."""
    from mlflow.tracking import MlflowClient

    # text in a numeric column: the header is right, the rows are not (ingest fails)
    bad = pd.read_csv(CHURN_CSV)
    bad["tenure"] = bad["tenure"].astype(object)
    bad.loc[3, "tenure"] = "twelve"
    data = runs_root.parent / "bad.csv"
    bad.to_csv(data, index=False)
    params = write_params(data={"uri": str(data), "sample_rows": 300})
    code = cli.main(["run", str(params), "--engine", "kfp-local", "--runs-root", str(runs_root)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "stage 'ingest' failed (cell" in err and "'tenure'" in err
    (run_dir,) = runs_root.iterdir()
    # the stage's kernel talks over IPC: no "running over TCP without encryption" warning
    kfp_log = (run_dir / "logs" / "kfp-local.log").read_text()
    assert "without encryption" not in err + kfp_log
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["status"], manifest["failed_stage"]) == ("failed", "ingest")
    assert manifest["failed_cell"] is not None
    assert manifest["stages"]["ingest"]["status"] == "failed"
    assert {manifest["stages"][s]["status"] for s in STAGE_NAMES[1:]} == {"not run"}
    assert (run_dir / "01_ingest.html").exists() and (run_dir / "index.html").exists()
    client = MlflowClient(config.load(params).tracking_uri())
    parent = client.get_run(manifest["mlflow"]["parent_run_id"])
    assert parent.info.status == "FAILED"
    (stage_run,) = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert stage_run.info.status == "FAILED"


def test_the_shipped_team_parameters_compile(tmp_path):
    """parameters/team.example.yaml is what the README tells a team to copy: it compiles
    as it is, with its image, workers on the shared study and resource requests."""
    pipe = components.load_component_from_file(
        str(compile_spec(ROOT / "parameters" / "team.example.yaml", tmp_path))
    )
    cfg = config.load(ROOT / "parameters" / "team.example.yaml")
    tasks = dag(pipe)
    assert {s.name for s in STAGES} <= {n.replace("-", "_") for n in tasks}
    executors = pipe.pipeline_spec.deployment_spec["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {cfg.kfp.image}
    params = json.loads(pipe.component_spec.inputs["params"].default)
    assert params["tuning"]["storage"] == cfg.tuning.storage
    assert params["tracking"]["tracking_uri"] == cfg.tracking.tracking_uri


def test_register_hands_over_the_model_card_it_completes(tmp_path):
    """evaluate leaves a first model_card.md, register (its producer) completes it: the
    register task must not take evaluate's as an input, or its own is never handed on."""
    up = tmp_path / "evaluate-artifact"
    up.mkdir()
    (up / "evaluate.json").write_text("{}")
    (up / "model_card.md").write_text("first")
    work = tmp_path / "work"
    work.mkdir()
    copied = steps._copy_upstream([str(up)], work, stage="register")
    assert copied == {Path("evaluate.json")} and not (work / "model_card.md").exists()
    (work / "model_card.md").write_text("completed")
    out = tmp_path / "out"
    steps._hand_over(work, out, copied)
    assert (out / "model_card.md").read_text() == "completed"


def test_the_run_folder_takes_the_stage_artifacts_in_stage_order(tmp_path):
    from mlfolio.pipeline.kfp import local

    root = tmp_path / "root"
    # task folders whose path order is not the stage order
    for task, stage, card in (("a", "register", "completed"), ("b", "evaluate", "first")):
        out = root / task / "products"
        (out / steps.ENTRY_DIR).mkdir(parents=True)
        (out / "model_card.md").write_text(card)
        (out / steps.ENTRY_DIR / f"{stage}.json").write_text(
            json.dumps({"stage": stage, "status": "succeeded"})
        )
    folder = tmp_path / "run"
    folder.mkdir()
    entries = local._collect_artifacts(root, folder)
    assert list(entries) == ["evaluate", "register"]
    assert (folder / "model_card.md").read_text() == "completed"


def test_each_stage_task_retries_and_is_bounded_as_its_stages_setting(team_params, tmp_path):
    """stages.<name>.retries is the task's retry policy (kfp re-runs it; its local runner
    too); the time limit travels in the parameters, and each task bounds its attempt."""
    text = compile_spec(
        team_params, tmp_path, "stages.train.retries=1", "stages.train.timeout_s=600"
    ).read_text()
    doc = list(yaml.safe_load_all(text))[0]
    tasks = {}
    for comp in [doc["root"], *doc["components"].values()]:
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    assert tasks["deploy"]["retryPolicy"]["maxRetryCount"] == 2  # deploy's default
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 1
    for name in ("ingest", "preprocess", "tune", "evaluate", "register", "tune-worker"):
        assert "retryPolicy" not in tasks[name], name
    params = json.loads(doc["root"]["inputDefinitions"]["parameters"]["params"]["defaultValue"])
    assert params["stages"]["train"] == {"retries": 1, "timeout_s": 600.0}
    assert params["stages"]["tune"]["timeout_s"] == 6 * 3600


def test_a_retried_task_keeps_its_failed_attempts_notebook(tmp_path):
    """kfp's local runner re-runs a task into the same output folder: the failed
    attempt's notebook and page are kept under its attempt's names, the rest cleared."""
    out = tmp_path / "products"
    (out / steps.ENTRY_DIR).mkdir(parents=True)
    (out / "02_preprocess.ipynb").write_text("partial")
    (out / "data").mkdir()
    (out / "data" / "train.parquet").write_text("half written")
    failed = {
        "stage": "preprocess",
        "status": "failed",
        "notebook": "02_preprocess.ipynb",
        "html": "02_preprocess.html",  # never rendered
        "error": {"cell_index": 3, "ename": "MemoryError", "evalue": ""},
        "parent_run_id": "p1",
    }
    (out / steps.ENTRY_DIR / "preprocess.json").write_text(json.dumps(failed))
    attempts = steps._earlier_attempts(out, "preprocess")
    assert attempts == [
        {
            "attempt": 1,
            "status": "failed",
            "notebook": "02_preprocess.attempt1.ipynb",
            "html": None,
            "error": {"cell_index": 3, "ename": "MemoryError", "evalue": ""},
        }
    ]
    assert sorted(p.name for p in out.rglob("*")) == ["02_preprocess.attempt1.ipynb"]
    assert steps._earlier_attempts(tmp_path / "fresh", "preprocess") == []
