"""The project's files agree with each other: dependencies, notebooks, parameters."""

from __future__ import annotations

import json
import os
import re
import tomllib

import papermill as pm
import pytest
import yaml

from mlfolio import pipeline

from .conftest import ROOT, load_script


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = set(project["dependencies"]) | set(extras["test"]) | set(extras["docs"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {p for p in pip_section if not p.startswith("-")}
    assert listed == wanted, "environment.yml and pyproject.toml disagree"


def test_every_dependency_is_pinned_in_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    extras = project["optional-dependencies"]
    wanted = _names(project["dependencies"] + extras["test"] + extras["docs"])
    assert wanted - pins == set()


@pytest.mark.parametrize("stage", pipeline.STAGES + pipeline.MONITOR_STAGES, ids=lambda s: s.name)
def test_notebooks_are_thin_clean_and_parameterized(stage):
    path = ROOT / "notebooks" / stage.notebook
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert "setup" in code[1]["metadata"].get("tags", [])
    assert f'open_stage("{stage.name}"' in "".join(code[1]["source"])
    assert all(len("".join(c["source"]).splitlines()) <= 6 for c in code)
    declared = pm.inspect_notebook(str(path))
    assert set(declared) == {"params_file", "run_dir", "parent_run_id", "overrides"}
    assert all(p["help"] for p in declared.values())  # documented for --help-notebook


def test_gitignore_keeps_outputs_out_and_lib_in():
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "/runs/*" in ignore and "/mlflow.db" in ignore
    assert not any(line.strip("/") == "lib" for line in ignore)


def test_committed_notebooks_are_what_build_notebooks_writes():
    """Notebooks are edited through tools/build_notebooks.py (`make notebooks`): a hand
    edit of a committed notebook would be lost at the next regeneration."""
    import nbformat

    build = load_script(ROOT / "tools" / "build_notebooks.py")
    for name in build.OUTLINES:
        committed = (ROOT / "notebooks" / f"{name}.ipynb").read_text()
        assert committed == nbformat.writes(build.build(name)) + "\n", (
            f"notebooks/{name}.ipynb differs from tools/build_notebooks.py's outline: edit "
            "the outline and run `make notebooks`"
        )


def test_the_registry_lock_files_beside_the_store_are_git_ignored():
    """``make run`` leaves ``mlflow.db.<purpose>-<model>.lock`` beside the project's store
    (:func:`mlfolio.locks.registry_lock`): ``git status`` must not list them."""
    import shutil
    import subprocess

    from mlfolio import locks

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    store = ROOT / "mlflow.db"
    for purpose in ("promote", "retrain"):
        path = locks.lock_file(store, purpose, "churn-classifier")
        assert path.parent == ROOT and path.name.startswith("mlflow.db.")
        rel = path.relative_to(ROOT).as_posix()
        checked = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT)
        assert checked.returncode == 0, f"{rel} is not git-ignored"
    kept = subprocess.run(["git", "check-ignore", "-q", "lib/mlfolio/locks.py"], cwd=ROOT)
    assert kept.returncode == 1


def _make_n_lab() -> str:
    import subprocess

    return subprocess.run(
        ["make", "-n", "-o", ".venv/.installed-stamp", "lab"],  # -o: no setup step
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_make_lab_runs_jupyter_as_root_with_allow_root():
    """jupyter refuses to start as root without --allow-root ("Running as root is not
    recommended"): the lab target adds it for uid 0 only."""
    import os

    command = next(line for line in _make_n_lab().splitlines() if "jupyter lab" in line)
    if os.geteuid() == 0:
        assert "--allow-root" in command.split(), command
    else:
        assert "--allow-root" not in command.split(), command


def test_jupyter_lab_as_make_lab_runs_it_starts_and_answers(tmp_path):
    """The lab target's command really starts JupyterLab here (as root when the tests
    run as root) and answers HTTP on a free port; then it is stopped."""
    import shlex
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    command = next(line for line in _make_n_lab().splitlines() if "jupyter lab" in line)
    argv = shlex.split(command)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv += [
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--IdentityProvider.token=",
    ]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "HOME": str(tmp_path)}
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, (proc.poll(), (tmp_path / "lab.log").read_text()[-2000:])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
