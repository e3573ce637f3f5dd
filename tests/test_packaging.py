"""The project's files agree with each other: dependencies, notebooks, parameters."""

from __future__ import annotations

import json
import re
import tomllib

import papermill as pm
import pytest
import yaml

from mlfolio import pipeline

from .conftest import ROOT


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
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
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["test"])
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
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location(
        "build_notebooks", ROOT / "tools" / "build_notebooks.py"
    )
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for name in build.OUTLINES:
        committed = (ROOT / "notebooks" / f"{name}.ipynb").read_text()
        assert committed == nbformat.writes(build.build(name)) + "\n", (
            f"notebooks/{name}.ipynb differs from tools/build_notebooks.py's outline: edit "
            "the outline and run `make notebooks`"
        )
