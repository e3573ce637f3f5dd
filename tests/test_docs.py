"""The manual: the parameter reference matches the config models, and MkDocs builds clean."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    return load_script(ROOT / "tools" / "gen_parameters_doc.py")


def test_parameter_reference_is_generated_from_the_models():
    gen = _generator()
    committed = gen.PAGE.read_text(encoding="utf-8")
    assert committed == gen.render(), (
        "docs/parameters-reference.md is out of date with lib/mlfolio/config/: "
        "run `make docs-parameters`"
    )


def test_every_field_and_section_has_a_description():
    assert _generator().undocumented() == []


def _keys(mapping: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("logreg", "xgboost"):  # free-form dicts
            keys += _keys(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def test_every_key_of_the_default_parameter_file_is_in_the_reference():
    # Independent of the generator's walk: the keys a real parameter file uses.
    page = _generator().PAGE.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([^`]+)` \|", page, flags=re.M))
    params = yaml.safe_load((ROOT / "parameters" / "churn.yaml").read_text(encoding="utf-8"))
    assert [key for key in _keys(params) if key not in documented] == []
    assert len(documented) > 100  # every section's table was written


def test_readme_links_into_docs_resolve_on_github():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert targets, "the README links to the manual"
    assert [t for t in targets if not (ROOT / t).exists()] == []
    assert len(readme.encode()) <= 15 * 1024


@pytest.mark.slow
def test_mkdocs_builds_with_no_warning(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr
    assert (tmp_path / "parameters-reference" / "index.html").exists()
    assert (tmp_path / "img" / "report.png").exists()
