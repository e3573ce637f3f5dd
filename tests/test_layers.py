"""The floor plan: no import cycle in lib/mlfolio (lazy imports counted) and the
import-linter contracts in pyproject.toml kept, so a cycle or an upward import fails the
suite, not only `make lint`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, load_script

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _graph_tool():
    return load_script(ROOT / "tools" / "import_graph.py")


def _lint(root: Path, config: Path) -> subprocess.CompletedProcess:
    """lint-imports on the mlfolio package under ``root`` (the checkout's own, or a copy)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root / "lib"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_module_of_the_package_is_in_an_import_cycle():
    graph = _graph_tool()
    found = graph.edges()
    assert graph.cycles(found) == []
    assert graph.upward(found, graph.floors()) == []
    # The graph counts imports inside functions (the cycle of 27 modules ran through them).
    assert any(e.lazy and e.source == "mlfolio.cli" for e in found)


def test_the_graph_tool_finds_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "mlfolio"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from mlfolio.sub import high\n\n    return high\n")
    (pkg / "sub" / "__init__.py").write_text("from mlfolio.sub.high import X\n")
    (pkg / "sub" / "high.py").write_text("from mlfolio import low\nfrom mlfolio.sub import X\n")
    graph = _graph_tool()
    # sub.high importing from its own package is no cycle; low <-> sub.high is one.
    assert graph.cycles(graph.edges(tmp_path)) == [["mlfolio.low", "mlfolio.sub.high"]]


def test_the_import_linter_contracts_are_kept():
    result = _lint(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_a_lazy_import_reaching_up_breaks_the_floor_plan(tmp_path):
    shutil.copytree(ROOT / "lib" / "mlfolio", tmp_path / "lib" / "mlfolio")
    files = tmp_path / "lib" / "mlfolio" / "files.py"
    files.write_text(files.read_text() + "\n\ndef _up():\n    from mlfolio import pipeline\n")
    result = _lint(tmp_path, ROOT / "pyproject.toml")
    assert result.returncode == 1, result.stdout
    assert "mlfolio.files is not allowed to import mlfolio.pipeline" in result.stdout
    assert "- mlfolio.files -> mlfolio.pipeline (l." in result.stdout
