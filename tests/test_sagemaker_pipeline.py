"""The stage chain as a SageMaker pipeline (``mlfolio compile sagemaker``): the definition
JSON for the team and the default parameters, its structure against a golden file, what
compile refuses, that no password reaches the definition, that each step runs the
committed notebook, the step entry's start/finish/secrets against real stores, and a
SageMaker API on loopback (moto) accepting and starting the pipeline."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mlfolio import cli, config, products
from mlfolio.errors import ConfigError
from mlfolio.graph import STAGES
from mlfolio.pipeline.provenance import notebook_source_hash

from .conftest import CHURN_PARAMS, ROOT, require_service

require_service(
    "the SageMaker SDK",
    importlib.util.find_spec("sagemaker.mlops") is not None,
    "the aws extra (mlfolio[aws]) builds the pipeline definition",
)

from mlfolio.pipeline.sagemaker import entry, plan  # noqa: E402

TEAM_PARAMS = ROOT / "parameters" / "team.example.yaml"
GOLDEN = Path(__file__).parent / "fixtures" / "sagemaker_pipeline.golden.json"
REGEN = "MLFOLIO_REGEN_GOLDEN"
# what the default parameters need to run on SageMaker (-p overrides)
ON_AWS = [
    "tracking.tracking_uri=http://mlflow.team.example:5000",
    "sagemaker.image_uri=123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlfolio:1",
    "sagemaker.role_arn=arn:aws:iam::123456789012:role/mlfolio-sagemaker",
    "deploy.aws.bucket=team-bucket",
    "deploy.aws.region=eu-west-1",
]
SECRET = "Sup3r-S3cret-9"


def compile_cli(params: Path, out: Path, *overrides: str) -> dict[str, Any]:
    args = ["compile", "sagemaker", str(params), "-o", str(out)]
    for item in overrides:
        args += ["-p", item]
    assert cli.main(args) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> dict[str, Any]:
    """The Measure: `mlfolio compile sagemaker parameters/team.example.yaml -o FILE`."""
    return compile_cli(TEAM_PARAMS, tmp_path_factory.mktemp("team") / "pipeline.json")


def all_steps(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every step by name, those inside the Condition step included (with ``Branch``)."""
    out = {}
    for step in doc["Steps"]:
        out[step["Name"]] = step
        if step["Type"] == "Condition":
            for branch in ("IfSteps", "ElseSteps"):
                for inner in step["Arguments"][branch]:
                    out[inner["Name"]] = {**inner, "Branch": branch}
    return out


def container_args(step: dict[str, Any]) -> list[Any]:
    return step["Arguments"]["AppSpecification"]["ContainerArguments"]


def flag(step: dict[str, Any], name: str) -> Any:
    args = container_args(step)
    return args[args.index(name) + 1]


def structure(doc: dict[str, Any]) -> dict[str, Any]:
    """What the golden file holds: steps, wiring, condition, retries, timeouts, caching
    (no hashes or parameter values: they change with every commit)."""
    steps = {}
    for name, step in all_steps(doc).items():
        if step["Type"] == "Condition":
            steps[name] = {"type": "Condition", "conditions": step["Arguments"]["Conditions"]}
            continue
        args = step["Arguments"]
        words = [a for a in container_args(step) if isinstance(a, str)]
        steps[name] = {
            "type": step["Type"],
            "branch": step.get("Branch"),
            "command": words[:2] if words[0] in ("stage", "tune-worker") else words[:1],
            "flags": sorted({a for a in words if a.startswith("--")}),
            "entrypoint": args["AppSpecification"]["ContainerEntrypoint"],
            "inputs": [i["InputName"] for i in args.get("ProcessingInputs", [])],
            "depends_on": step.get("DependsOn", []),
            "instance_type": args["ProcessingResources"]["ClusterConfig"]["InstanceType"],
            "max_runtime_s": args.get("StoppingCondition", {}).get("MaxRuntimeInSeconds"),
            "cache": step.get("CacheConfig"),
            "retry": step.get("RetryPolicies", []),
            "property_files": step.get("PropertyFiles", []),
            "environment": sorted(args.get("Environment") or {}),
        }
    return {"parameters": doc["Parameters"], "steps": steps}


# -- the definition ---------------------------------------------------------------------------
def test_team_definition_has_a_step_per_stage_a_condition_and_retries(team):
    steps = all_steps(team)
    for stage in STAGES:
        step = steps[stage.name]
        assert step["Type"] == "Processing"
        assert container_args(step)[:2] == ["stage", stage.name]
        # gated stages sit in the Condition step's if-branch, the others at the top
        assert step.get("Branch") == ("IfSteps" if stage.gated else None)
        # wiring as the graph declares it: products of the stages it reads, then `after`
        inputs = [i["InputName"] for i in step["Arguments"].get("ProcessingInputs", [])]
        assert inputs == list(stage.upstream)
        for name in stage.after:
            assert name in step.get("DependsOn", [])
    (cond,) = [s for s in team["Steps"] if s["Type"] == "Condition"]
    (check,) = cond["Arguments"]["Conditions"]
    assert check["Type"] == "Equals" and check["RightValue"] is True
    assert check["LeftValue"]["Std:JsonGet"] == {
        "PropertyFile": {"Get": "Steps.evaluate.PropertyFiles.gate"},
        "Path": "gate.passed",
    }
    assert steps["evaluate"]["PropertyFiles"] == [
        {"PropertyFileName": "gate", "OutputName": "products", "FilePath": "evaluate.json"}
    ]
    # evaluate.json's verdict is where the JSON path says
    assert "passed" in products.EVALUATE.model.model_fields["gate"].annotation.model_fields
    # deploy is retried twice by default (stages.deploy.retries), on service and job faults
    retry = steps["deploy"]["RetryPolicies"]
    assert {p["MaxAttempts"] for p in retry} == {2}
    assert {e for p in retry for e in p["ExceptionType"]} == {
        "Step.SERVICE_FAULT",
        "Step.THROTTLING",
        "SageMaker.JOB_INTERNAL_ERROR",
        "SageMaker.CAPACITY_ERROR",
        "SageMaker.RESOURCE_LIMIT",
    }
    # tune is time-bounded by default (stages.tune.timeout_s: 6 h)
    assert steps["tune"]["Arguments"]["StoppingCondition"] == {"MaxRuntimeInSeconds": 21600}
    assert "StoppingCondition" not in steps["train"]["Arguments"]
    # finish ends the parent run in either branch
    assert steps["finish"]["Branch"] == "IfSteps" and steps["finish"]["DependsOn"] == ["deploy"]
    assert steps["finish-gate-failed"]["Branch"] == "ElseSteps"


def test_tuning_fans_out_to_parallel_worker_steps_on_one_study(team):
    steps = all_steps(team)
    workers = [f"tune-worker-{k}" for k in range(2)]  # tuning.n_workers: 2
    for k, name in enumerate(workers):
        worker = steps[name]
        assert container_args(worker)[:2] == ["tune-worker", str(k)]
        assert [i["InputName"] for i in worker["Arguments"]["ProcessingInputs"]] == ["preprocess"]
        assert worker["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceType"] == (
            "ml.c5.2xlarge"
        )
        assert "DependsOn" not in worker  # parallel: they wait only for their input
    assert set(workers) <= set(steps["tune"]["DependsOn"])
    assert "--fanned-out" in container_args(steps["tune"])
    # all of them name the study after the same products: preprocess's S3 folder
    study = {"Get": "Steps.preprocess.ProcessingOutputConfig.Outputs['products'].S3Output.S3Uri"}
    assert {json.dumps(flag(steps[n], "--study-of")) for n in [*workers, "tune"]} == {
        json.dumps(study)
    }


def test_team_services_are_pipeline_parameters(team):
    params = {p["Name"]: p for p in team["Parameters"]}
    assert params[plan.TRACKING]["DefaultValue"] == "http://mlflow.team.internal:5000"
    assert params[plan.TUNING]["DefaultValue"] == (
        "postgresql+psycopg://optuna@db.team.internal:5432/optuna"
    )
    assert params[plan.S3_ROOT]["DefaultValue"] == "s3://team-bucket/sagemaker"
    step = all_steps(team)["train"]
    assert flag(step, "--tracking-uri") == {"Get": f"Parameters.{plan.TRACKING}"}
    assert flag(step, "--tuning-storage") == {"Get": f"Parameters.{plan.TUNING}"}
    dest = step["Arguments"]["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    assert dest["Std:Join"]["Values"] == [
        {"Get": f"Parameters.{plan.S3_ROOT}"},
        {"Get": "Execution.PipelineExecutionId"},
        "train",
    ]
    # the database password by reference: a Secrets Manager name in the environment
    assert step["Arguments"]["Environment"] == {"MLFOLIO_SECRET_PGPASSWORD": "mlfolio/postgres"}


def test_caching_follows_the_local_reuse(team):
    steps = all_steps(team)
    cached = {n for n, s in steps.items() if s.get("CacheConfig", {}).get("Enabled")}
    # ingest reads a file in the image (its hash is an argument); evaluate reads the
    # champion, which can move under the same arguments; register, deploy act outside
    assert cached == {"ingest", "preprocess", "train", "tune", "tune-worker-0", "tune-worker-1"}
    assert steps["train"]["CacheConfig"]["ExpireAfter"] == "P30D"
    assert "--source-sha" in container_args(steps["ingest"])


def test_golden_structure(team):
    """The definition's structure as committed in tests/fixtures/ (regenerate with
    MLFOLIO_REGEN_GOLDEN=1 and review the diff)."""
    got = structure(team)
    if os.environ.get(REGEN) == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text()), f"differs from {GOLDEN} ({REGEN}=1 rewrites it)"


def test_every_argument_fits_sagemakers_limits(team):
    for name, step in all_steps(team).items():
        if step["Type"] != "Processing":
            continue
        args = container_args(step)
        assert len(args) <= plan.ARGS_MAX, name
        assert all(len(a) <= plan.ARG_MAX for a in args if isinstance(a, str)), name
        # the parameters, joined from their pieces, are the validated parameter file
        pieces = [args[i + 1] for i, a in enumerate(args) if a == "--params"]
        cfg = config.from_mapping(json.loads("".join(pieces)), source=name)
        assert cfg.experiment == "churn" and cfg.tuning.n_workers == 2


def test_each_step_runs_the_committed_notebook(team, tmp_path):
    """Each stage step names the hash of its notebook as committed (the step checks the
    image's copy against it before running: the next test)."""
    steps = all_steps(team)
    for stage in STAGES:
        path = f"notebooks/{stage.notebook}"
        committed = subprocess.run(
            ["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True
        )
        assert committed.returncode == 0, f"{path} is not committed: {committed.stderr}"
        copy = tmp_path / stage.notebook
        copy.write_text(committed.stdout)
        assert plan.stage_notebook(stage.name) == ROOT / path
        assert flag(steps[stage.name], "--notebook-sha") == notebook_source_hash(copy), path


def test_the_step_refuses_an_image_with_another_notebook(team, tmp_path):
    step = all_steps(team)["train"]
    args = [a if isinstance(a, str) else "" for a in container_args(step)]
    parsed = entry.parse_args(args)
    cfg = entry.load(parsed)
    entry.check_sources(parsed, cfg)  # this checkout is what was compiled
    args[args.index("--notebook-sha") + 1] = "0" * 64
    with pytest.raises(ConfigError, match=r"03_train.ipynb in this image hashes to"):
        entry.check_sources(entry.parse_args(args), cfg)


def test_default_parameters_compile_with_a_tracking_server(tmp_path):
    doc = compile_cli(CHURN_PARAMS, tmp_path / "p.json", *ON_AWS)
    steps = all_steps(doc)
    assert [n for n in steps if n.startswith("tune-worker")] == []  # n_workers: 1
    assert "--fanned-out" not in container_args(steps["tune"])
    assert "Environment" not in steps["train"]["Arguments"]  # no secrets named
    params = {p["Name"]: p.get("DefaultValue") for p in doc["Parameters"]}
    assert params == {
        plan.TRACKING: "http://mlflow.team.example:5000",
        plan.TUNING: "",
        plan.S3_ROOT: "s3://team-bucket/mlfolio-churn",
    }


def test_no_password_reaches_the_definition(tmp_path, caplog):
    doc = compile_cli(
        TEAM_PARAMS,
        tmp_path / "p.json",
        f"tracking.tracking_uri=http://alice:{SECRET}@mlflow.team.internal:5000",
        f"tuning.storage=postgresql+psycopg://optuna:{SECRET}@db.team.internal:5432/optuna",
        f"registry.lock_uri=postgresql+psycopg://mlflow:{SECRET}@db.team.internal:5432/m",
    )
    text = json.dumps(doc)
    assert SECRET not in text
    assert "postgresql+psycopg://optuna@db.team.internal:5432/optuna" in text
    assert "http://alice@mlflow.team.internal:5000" in text
    warned = " ".join(r.getMessage() for r in caplog.records)
    for key in ("tracking.tracking_uri", "tuning.storage", "registry.lock_uri"):
        assert f"{key}: its password is left out" in warned


def test_compile_refuses_a_definition_sagemaker_would_not_take(monkeypatch, tmp_path, capsys):
    """CreatePipeline takes 1 MiB of definition; each step carries the parameters (~8 KB),
    so ~120 tuning workers are too many (a smaller limit here keeps the test short)."""
    monkeypatch.setattr(plan, "DEFINITION_MAX", 50_000)
    out = tmp_path / "p.json"
    args = ["compile", "sagemaker", str(TEAM_PARAMS), "-o", str(out)]
    assert cli.main(args) == 2
    assert "CreatePipeline takes 50000 (each step" in capsys.readouterr().err
    assert not out.exists()


def test_a_step_takes_at_most_ten_inputs():
    step = plan.StepPlan(
        "evaluate", ("stage", "evaluate"), inputs=tuple(f"s{i}" for i in range(11))
    )
    bad = plan.Plan("p", "role", "image", None, {}, (step,), "evaluate", "gate.passed")
    with pytest.raises(ConfigError, match="reads the products of 11 stages"):
        plan.check_limits(bad)


def test_scrub_refuses_a_password_it_cannot_separate():
    with pytest.raises(ConfigError, match="tuning.storage: the password in this URL"):
        plan.scrub({"tuning": {"storage": "postgresql://u:p/w@h/db"}})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ([], "tracking.tracking_uri"),  # the default: a SQLite file on this machine
        (
            [*ON_AWS, "tuning.n_workers=2", "tuning.storage=sqlite:////tmp/optuna.db"],
            "tuning.storage",
        ),
        ([o for o in ON_AWS if "image_uri" not in o], "sagemaker.image_uri"),
        (
            [o for o in ON_AWS if "role_arn" not in o and "bucket" not in o],
            "sagemaker.role_arn",
        ),
        ([o for o in ON_AWS if "bucket" not in o], "sagemaker.s3_uri"),
        ([*ON_AWS, "sagemaker.instance_types={tune_workers: ml.c5.xlarge}"], "instance_types"),
        ([*ON_AWS, "stages.tune.timeout_s=800000"], "stages.tune.timeout_s"),
    ],
)
def test_compile_refuses_what_cannot_run_on_sagemaker(overrides, key, capsys, tmp_path):
    args = ["compile", "sagemaker", str(CHURN_PARAMS), "-o", str(tmp_path / "p.json")]
    for item in overrides:
        args += ["-p", item]
    assert cli.main(args) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


# -- the step entry ---------------------------------------------------------------------------
def job_config(root: Path, destination: str) -> None:
    """The processing job's configuration file, as SageMaker writes it in a container."""
    out = {"Outputs": [{"OutputName": "products", "S3Output": {"S3Uri": destination}}]}
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "processingjobconfig.json").write_text(
        json.dumps({"ProcessingJobName": "x", "ProcessingOutputConfig": out})
    )


def test_start_and_finish_steps_open_and_close_the_parent_run(
    team, tmp_path, tracking_dir, monkeypatch
):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tracking_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFOLIO_SAGEMAKER_ROOT", str(tmp_path / "ml"))
    steps = all_steps(team)
    folder = "s3://team-bucket/sagemaker/exec123"

    def run(step: str) -> dict[str, Any]:
        job_config(tmp_path / "ml", f"{folder}/{step}")
        args = [a if isinstance(a, str) else "" for a in container_args(steps[step])]
        args[args.index("--tracking-uri") + 1] = uri  # the pipeline parameter, here local
        assert entry.main(args) == 0
        out = tmp_path / "ml" / "processing" / "output" / "products"
        return {p.name: json.loads(p.read_text()) for p in out.glob("*.json")}

    started = run("start")["run.json"]
    assert started["run_folder"] == folder and started["run_name"] == "churn-sm-exec123"
    client = MlflowClient(uri)
    parent = client.get_run(started["parent_run_id"])
    assert parent.data.tags[entry.RUN_TAG] == folder
    assert parent.data.tags["mlfolio.engine"] == "sagemaker"
    assert parent.info.status == "RUNNING"
    # a step of the same execution finds it by the folder its output goes to
    args = [a if isinstance(a, str) else "" for a in container_args(steps["train"])]
    args[args.index("--tracking-uri") + 1] = uri
    cfg = entry.load(entry.parse_args(args))
    assert entry.parent_run(cfg, folder) == parent.info.run_id
    assert run("finish")["finished.json"] == {"parent_run_id": parent.info.run_id}
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


class Execution:
    """Steps of a compiled definition run here as SageMaker runs them: each in a job folder
    of its own (``/opt/ml``), its processing inputs downloaded from the S3 folders of the
    steps named, its arguments resolved (pipeline parameters, step properties), its
    output folder kept as that step's S3 folder."""

    def __init__(self, doc: dict[str, Any], root: Path, parameters: dict[str, str]):
        self.steps = all_steps(doc)
        self.root = root
        self.folder = "s3://team-bucket/mlfolio-churn/exec-e2e"
        self.parameters = {p["Name"]: p.get("DefaultValue", "") for p in doc["Parameters"]}
        self.parameters.update(parameters)
        self.s3: dict[str, Path] = {}  # S3 folder -> what the step uploaded

    def resolve(self, arg: Any) -> str:
        if isinstance(arg, str):
            return arg
        ref = arg["Get"]
        if ref.startswith("Parameters."):
            return self.parameters[ref.removeprefix("Parameters.")]
        step = ref.removeprefix("Steps.").split(".")[0]
        assert ref.endswith("ProcessingOutputConfig.Outputs['products'].S3Output.S3Uri"), ref
        return f"{self.folder}/{step}"

    def run(self, name: str, monkeypatch: Any) -> int:
        import shutil

        step = self.steps[name]
        job = self.root / name
        job_config(job, f"{self.folder}/{name}")
        for channel in step["Arguments"].get("ProcessingInputs", []):
            uri = self.resolve(channel["S3Input"]["S3Uri"])
            local = Path(channel["S3Input"]["LocalPath"]).relative_to("/opt/ml")
            shutil.copytree(self.s3[uri], job / local)
        monkeypatch.setenv("MLFOLIO_SAGEMAKER_ROOT", str(job))
        code = entry.main([self.resolve(a) for a in container_args(step)])
        self.s3[f"{self.folder}/{name}"] = job / "processing" / "output" / "products"
        return code

    def output(self, name: str) -> Path:
        return self.s3[f"{self.folder}/{name}"]


@pytest.mark.slow
def test_stage_steps_run_and_hand_over_as_on_sagemaker(tmp_path, tracking_dir, monkeypatch):
    """start, ingest, preprocess and a tuning worker of a compiled definition, run by the
    entry as SageMaker would; then a stage that fails ends the parent run FAILED."""
    from mlflow.tracking import MlflowClient

    doc = compile_cli(
        CHURN_PARAMS,
        tmp_path / "p.json",
        *ON_AWS,
        "data.sample_rows=1000",
        "tuning.n_workers=2",
        "tuning.storage=postgresql+psycopg://optuna@db.team.example:5432/optuna",
        "tuning.n_trials=2",
        "tuning.cv_folds=2",
    )
    from . import team

    uri = f"sqlite:///{tracking_dir / 'mlflow.db'}"
    database = team.create_database("mlfolio_sm")
    # the pipeline parameters of this execution: the services here
    optuna_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    run = Execution(doc, tmp_path / "jobs", {plan.TRACKING: uri, plan.TUNING: optuna_url})
    try:
        for name in ("start", "ingest", "preprocess", "tune-worker-0"):
            assert run.run(name, monkeypatch) == 0, name
    finally:
        team.drop_database(database)
    for path in products.of_stage("ingest"):
        assert (run.output("ingest") / path).is_file(), path
    for split in products.SPLITS.values():
        assert (run.output("preprocess") / split.path).is_file(), split.path
    entry_doc = json.loads((run.output("preprocess") / "_kfp" / "preprocess.json").read_text())
    assert entry_doc["status"] == "succeeded"
    worker = json.loads((run.output("tune-worker-0") / "worker.json").read_text())
    assert worker["ran"] == 2 and worker["study"].startswith("churn-sm-")
    client = MlflowClient(uri)
    parent = json.loads((run.output("start") / "run.json").read_text())["parent_run_id"]
    stages = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert {r.data.tags.get("mlfolio.stage") for r in stages} >= {"ingest", "preprocess"}
    assert client.get_run(parent).info.status == "RUNNING"
    # evaluate without train's and tune's products: its notebook fails, and with it the run
    run.s3[f"{run.folder}/train"] = run.s3[f"{run.folder}/tune"] = tmp_path / "empty"
    (tmp_path / "empty").mkdir()
    assert run.run("evaluate", monkeypatch) == 1
    assert client.get_run(parent).info.status == "FAILED"


def test_run_folder_needs_the_job_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFOLIO_SAGEMAKER_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="no processing job configuration"):
        entry.run_folder()
    job_config(tmp_path, "s3://b/p/e1/train/")
    assert entry.run_folder() == "s3://b/p/e1"


def test_study_name_is_shared_and_follows_the_products():
    cfg = config.load(TEAM_PARAMS)
    a = entry.study_name(cfg, "s3://b/p/e1/preprocess")
    assert a == entry.study_name(cfg, "s3://b/p/e1/preprocess")
    assert a != entry.study_name(cfg, "s3://b/p/e2/preprocess")
    assert a.startswith("churn-sm-")


# -- AWS on loopback ----------------------------------------------------------------------------
@pytest.fixture
def aws(moto_url, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    return moto_url


@pytest.mark.slow
def test_sagemaker_api_accepts_and_starts_the_pipeline(team, aws):
    import boto3

    sm = boto3.client("sagemaker", endpoint_url=aws)
    name = "mlfolio-churn"
    role = "arn:aws:iam::123456789012:role/mlfolio-sagemaker"
    arn = sm.create_pipeline(
        PipelineName=name,
        PipelineDefinition=json.dumps(team),
        RoleArn=role,
        ClientRequestToken="mlfolio-test-create-pipeline-0001",
    )["PipelineArn"]
    described = sm.describe_pipeline(PipelineName=name)
    assert described["PipelineArn"] == arn
    assert json.loads(described["PipelineDefinition"]) == team
    started = sm.start_pipeline_execution(
        PipelineName=name,
        PipelineParameters=[
            {"Name": plan.TRACKING, "Value": "http://mlflow.other.internal:5000"},
        ],
        ClientRequestToken="mlfolio-test-start-execution-0001",
    )
    execution = sm.describe_pipeline_execution(PipelineExecutionArn=started["PipelineExecutionArn"])
    assert execution["PipelineArn"] == arn
    params = sm.list_pipeline_parameters_for_execution(
        PipelineExecutionArn=started["PipelineExecutionArn"]
    )["PipelineParameters"]
    assert {"Name": plan.TRACKING, "Value": "http://mlflow.other.internal:5000"} in params


@pytest.mark.slow
def test_a_step_reads_its_secrets_from_secrets_manager(aws, monkeypatch):
    import boto3

    boto3.client("secretsmanager", endpoint_url=aws).create_secret(
        Name="mlfolio/postgres", SecretString=SECRET
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", aws)
    env = {"MLFOLIO_SECRET_PGPASSWORD": "mlfolio/postgres", "OTHER": "x"}
    assert entry.load_secrets(env) == ["PGPASSWORD"]
    assert env["PGPASSWORD"] == SECRET
    with pytest.raises(Exception, match="ResourceNotFound"):
        entry.load_secrets({"MLFOLIO_SECRET_X": "missing"})


def iam_policies() -> list[dict[str, Any]]:
    """The JSON policies of docs/aws.md's IAM section: the execution role's, the caller's."""
    import re

    text = (ROOT / "docs" / "aws.md").read_text()
    section = text[text.index("## IAM permissions") :]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def actions(policy: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for statement in policy["Statement"]:
        found = statement["Action"]
        out |= {found} if isinstance(found, str) else set(found)
    return out


@pytest.mark.slow
def test_the_documented_iam_policies_are_valid_and_cover_the_pipeline(aws):
    import boto3

    execution, caller = iam_policies()
    iam = boto3.client("iam", endpoint_url=aws)
    for name, policy in (("execution", execution), ("caller", caller)):
        iam.create_policy(PolicyName=f"mlfolio-{name}", PolicyDocument=json.dumps(policy))
    # the execution role starts the steps' jobs, passes itself, reads the secrets and S3
    assert {
        "sagemaker:CreateProcessingJob",
        "iam:PassRole",
        "secretsmanager:GetSecretValue",
        "s3:GetObject",
        "s3:PutObject",
        "ecr:BatchGetImage",
        "logs:PutLogEvents",
    } <= actions(execution)
    # what docs/aws.md's commands call
    assert {
        "sagemaker:CreatePipeline",
        "sagemaker:UpdatePipeline",
        "sagemaker:StartPipelineExecution",
        "sagemaker:ListPipelineExecutionSteps",
        "iam:PassRole",
        "ecr:PutImage",
    } <= actions(caller)


def test_definition_module_is_imported_lazily():
    """Importing mlfolio.pipeline.sagemaker does not import the SDK (10 s)."""
    code = (
        "import sys, mlfolio.pipeline.sagemaker.definition, mlfolio.pipeline.sagemaker.entry;"
        "print('sagemaker.mlops' in sys.modules)"
    )
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_a_parameters_piece_starting_with_a_dash_is_read_as_the_value():
    # the JSON is cut every 256 characters: a piece may start with '-' (a negative number,
    # a '-' in text), which argparse took for an option ('--params: expected one argument')
    pieces = ['{"a":', "-1,", '"b":"--x"}']
    args = entry.parse_args(
        ["stage", "train", *[a for p in pieces for a in ("--params", p)], "--tracking-uri", ""]
    )
    assert args.stage == "train" and "".join(args.params) == '{"a":-1,"b":"--x"}'
    assert args.tracking_uri == ""
