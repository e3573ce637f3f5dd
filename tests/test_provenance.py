"""Provenance: what a stage's input hash covers."""

from __future__ import annotations

from pathlib import Path

import mlfolio
from mlfolio.pipeline import provenance


def test_package_hash_covers_every_module_of_every_subpackage():
    root = Path(mlfolio.__file__).resolve().parent
    files = {p.relative_to(root).as_posix() for p in provenance.package_files()}
    assert {
        "stages/training.py",
        "pipeline/runner.py",
        "serve/app.py",
        "monitor/drift.py",
        "deploy/kubernetes/validate.py",
    } <= files
    assert len(provenance.package_source_hash()) == 64
