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


def test_a_json_product_hashes_its_content_not_the_ids_its_run_gave_it(tmp_path):
    """Two runs that trained the same model log it under other URIs and run ids (and may
    write keys in another order): the stages after them must see the same upstream."""
    import json

    def doc(uri: str, run: str, c: float) -> dict:
        return {
            "models": {
                "logreg": {
                    "name": "logreg",
                    "kind": "logreg",
                    "params": {"C": c, "max_iter": 200},
                    "model_uri": uri,
                    "run_id": run,
                    "valid": {"roc_auc": 0.84, "pr_auc": 0.61},
                }
            },
            "mlflow_run_id": run,
        }

    a, b, c = (tmp_path / n for n in ("a.json", "b.json", "c.json"))
    a.write_text(json.dumps(doc("models:/m-aaa", "r1", 1.0)))
    reordered = doc("models:/m-bbb", "r2", 1.0)
    reordered["models"]["logreg"] = dict(reversed(reordered["models"]["logreg"].items()))
    b.write_text(json.dumps(reordered))
    c.write_text(json.dumps(doc("models:/m-aaa", "r1", 0.5)))  # another model
    assert provenance._product_hash(a) == provenance._product_hash(b)
    assert provenance._product_hash(a) != provenance._product_hash(c)
