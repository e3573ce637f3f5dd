"""The model card renderer, on a real model's evaluation of the Telco test rows."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mlfolio import config, data, evaluate, explain, features, model_card, train
from mlfolio.stages import explaining

from .conftest import CHURN_PARAMS


@pytest.fixture(scope="module")
def evaluated():
    """A logreg champion and a noisier candidate scored on the real test rows."""
    cfg = config.load(CHURN_PARAMS)
    churn = data.validate(data.load_source(cfg.data), cfg.schema)
    parts = features.split(churn, cfg.schema, cfg.split, seed=cfg.seed)
    model = train.fit(cfg.schema, "logreg", {"max_iter": 2000}, parts["train"], 0)
    test = parts["test"]
    y = data.target_vector(test, cfg.schema).to_numpy()
    champion = train.predict_scores(model, test, cfg.schema)
    noise = np.random.default_rng(0).normal(0, 0.25, len(y))
    candidate = np.clip(champion + noise, 0, 1)
    summary, _ = explain.explain_model(model, test, y, cfg.schema, parts["train"], 2, 0)
    ev = {
        "candidate": {
            "name": "logreg",
            "kind": "logreg",
            "params": {"max_iter": 2000},
            "model_uri": "models:/m-0123",
            "run_id": "run-candidate",
            "test": evaluate.classification_metrics(y, candidate, 0.4),
        },
        "threshold": 0.4,
        "champion": {
            "version": "3",
            "test": evaluate.classification_metrics(y, champion, 0.4),
            "threshold": 0.4,
            "threshold_source": "unknown (version 3 has no mlfolio.threshold tag and no "
            "readable evaluate.json): scored at the candidate's threshold",
        },
        "gate": {"passed": False, "reasons": ["FAIL ROC AUC gain over champion v3 ..."]},
        "intervals": {
            "metrics": evaluate.bootstrap_intervals(y, candidate, 0.4, 200, 0.95, 0),
            "confidence": 0.95,
            "samples": 200,
        },
        "explain": {"candidate": summary},
        "segments": explaining.segments(
            cfg, test, {"candidate": (candidate, 0.4), "champion": (champion, 0.4)}, summary
        ),
    }
    facts = {
        "experiment": cfg.experiment,
        "description": cfg.description,
        "model_name": cfg.model_name,
        "target": cfg.schema.target,
        "positive_label": cfg.schema.positive_label,
        "threshold_rule": "fixed by evaluation.threshold",
        "inputs": {
            "numeric": list(cfg.schema.numeric),
            "categorical": list(cfg.schema.categorical),
            "id_column": cfg.schema.id_column,
        },
        "data": {
            "source": "data/telco_churn.csv",
            "data_hash": "ab12",
            "rows": len(churn),
            "positive_rate": float(data.target_vector(churn, cfg.schema).mean()),
        },
        "lineage": {"run_dir": "/runs/r1"},
    }
    return ev, facts


def test_card_before_register_says_what_is_missing(evaluated):
    ev, facts = evaluated
    card = model_card.render(ev, {**facts, "version": None})
    assert card.startswith("# Model card: churn-classifier candidate (not registered yet)")
    assert "Not registered yet: the register stage completes this card." in card
    assert "Gate: **not passed**" in card and "FAIL ROC AUC gain over champion v3" in card
    assert "| metric (test rows) | candidate | interval | champion v3 |" in card
    iv = ev["intervals"]["metrics"]["recall"]
    assert f"| recall | {ev['candidate']['test']['recall']:.4f} | {iv['low']:.4f} … " in card
    assert "Intervals: 95% percentile bootstrap over 200 resamples" in card
    assert "F1 on the validation rows" not in card  # a fixed threshold: no max_f1 caveat
    # the declared types, which MLflow's signature (type Any) no longer shows
    assert "- Numeric (read as numbers; blank text is missing): `tenure`, " in card
    assert "`seniorcitizen`" in card.split("- Categorical")[1].splitlines()[0]
    assert "- Id column `customerid`: accepted, never scored" in card


def test_card_shows_an_undefined_precision_as_n_a(evaluated):
    ev, facts = evaluated
    y = np.r_[np.ones(10), np.zeros(30)]
    scores = np.linspace(0.1, 0.5, 40)
    test = evaluate.classification_metrics(y, scores, 0.9)  # no row predicted positive
    intervals = evaluate.bootstrap_intervals(y, scores, 0.9, 50, 0.95, 0)
    ev = {
        **ev,
        "candidate": {**ev["candidate"], "test": test},
        "intervals": {**ev["intervals"], "metrics": intervals},
    }
    card = model_card.render(ev, {**facts, "version": None})
    champion = ev["champion"]["test"]["precision"]
    assert f"| precision | n/a | n/a | {champion:.4f} |" in card
    assert "| recall | 0.0000 | 0.0000 … 0.0000 |" in card


def test_card_limitations_name_the_flagged_segments_and_an_unknown_threshold(evaluated):
    ev, facts = evaluated
    flagged = [r for r in ev["segments"]["rows"] if r["flagged"]]
    assert flagged, "the noisy candidate should rank worse somewhere"
    card = model_card.render(ev, {**facts, "version": None})
    limitations = card.split("## Limitations")[1].split("## Lineage")[0]
    assert (
        "The candidate ranks worse than the champion (the interval of the ROC AUC difference "
        "below 0) in segment(s): " in limitations
    )
    for r in flagged:
        assert f"{r['column']} = {r['value']}" in limitations
        assert f"| {r['column']} = {r['value']} | {r['rows']} |" in card
    assert "Champion threshold unknown (version 3 has no mlfolio.threshold tag" in limitations
    assert "**worse**" in card.split("## Segments")[1]


def test_card_after_register_names_the_version_and_its_card_uri(evaluated):
    ev, facts = evaluated
    version = {
        "name": "churn-classifier",
        "version": "4",
        "uri": "models:/churn-classifier/4",
        "promoted": False,
        "champion": "3",
        "card_uri": "runs:/run-candidate/model_card/model_card.md",
    }
    card = model_card.render(ev, {**facts, "version": version})
    assert card.startswith("# Model card: churn-classifier version 4\n")
    assert "Registered as **churn-classifier v4**; not promoted (champion: 3)" in card
    assert "- Registered model: `models:/churn-classifier/4`" in card
    assert "- This card in MLflow: `runs:/run-candidate/model_card/model_card.md`" in card
    assert "- Logged model: `models:/m-0123`" in card


def test_writing_the_index_page_imports_no_scikit_learn(tmp_path):
    # The runner writes index.html after every run: ranking an explain summary (the
    # "why the model decides" section, the card) is plain dicts, no model code.
    code = (
        "import sys\nfrom pathlib import Path\nfrom mlfolio import model_card\n"
        "from mlfolio.pipeline import report\n"
        f"report.write_index(Path({str(tmp_path)!r}), {{'status': 'succeeded', 'stages': {{}}}})\n"
        "assert model_card.top_features({'mean_abs': {'a': 1.0, 'b': 2.0}}, 1) == ['b']\n"
        "print(sorted(m for m in ('sklearn', 'xgboost', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith("[]")
    assert (tmp_path / "index.html").is_file()


def test_ranking_is_by_attribution_else_by_permutation():
    summary = {
        "mean_abs": {"tenure": 0.2, "contract": 0.9, "gender": 0.01},
        "permutation": {"tenure": {"mean": 0.05}, "contract": {"mean": 0.01}},
    }
    assert model_card.ranking(summary) == (
        {"contract": 0.9, "tenure": 0.2, "gender": 0.01},
        "mean_abs",
    )
    assert model_card.top_features(summary, 2) == ["contract", "tenure"]
    permutation_only = {**summary, "mean_abs": None}
    assert model_card.ranking(permutation_only) == (
        {"tenure": 0.05, "contract": 0.01},
        "permutation",
    )
    assert model_card.ranking(None) == ({}, "permutation")
    assert model_card.top_features(None) == []


def test_the_card_is_written_through_a_new_file(tmp_path):
    # a reused stage's files are hard links to an earlier run's: rewriting the card (register
    # completes evaluate's) must leave the earlier run's copy as it was
    from mlfolio.files import write_text

    earlier, card = tmp_path / "earlier.md", tmp_path / "run" / "model_card.md"
    earlier.write_text("earlier run's card\n")
    card.parent.mkdir()
    card.hardlink_to(earlier)
    write_text(card, "completed card\n")
    assert card.read_text() == "completed card\n"
    assert earlier.read_text() == "earlier run's card\n"
    assert not list(card.parent.glob("*.tmp"))


def test_card_says_when_the_intervals_come_from_a_sample_of_the_test_rows(evaluated):
    ev, facts = evaluated
    whole = model_card.render(ev, {**facts, "version": None})
    assert "resamples of the test rows." in whole
    sampled = {**ev, "intervals": {**ev["intervals"], "rows": 20_000, "test_rows": 400_000}}
    card = model_card.render(sampled, {**facts, "version": None})
    assert (
        "over 200 resamples of a stratified sample of 20,000 of the 400,000 test rows, its "
        "spread rescaled by sqrt(sample / rows) around the value on all of them." in card
    )
