"""mlfolio diff: what changed between two run folders, as text and as diff.html."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mlfolio import pipeline
from mlfolio.cli import main
from mlfolio.pipeline import diff

from .conftest import (
    CHURN_PARAMS,
    SMALL,
    deep_update,
    require_chromium,
    require_module,
    tracking_section,
)

QUIET = {"echo": lambda line: None}
# Small and quick: logreg only, no tuning; A goes up to register (promoted: champion).
FAST = {"training": {"models": ["logreg"]}, "tuning": {"enabled": False}}
UP_TO_REGISTER = ["ingest", "preprocess", "train", "tune", "evaluate", "register"]


def test_flat_gives_dotted_keys():
    assert diff._flat({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
    }


def test_a_folder_without_a_manifest_is_refused_with_exit_2(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert main(["diff", str(tmp_path / "a"), str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_a_delta_is_better_or_worse_by_the_metrics_direction():
    assert diff.compared("roc_auc", 0.01) == "better"
    assert diff.compared("pr_auc", -0.01) == "worse"
    assert diff.compared("f1", 0.0) == "same"
    assert diff.compared("log_loss", 0.01) == "worse"  # lower is better
    assert diff.compared("brier", -0.002) == "better"
    assert diff.compared("threshold", 0.1) is None  # neither
    assert diff.compared("precision", None) is None  # n/a on one side


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A (champion version 1) and B, one parameter changed, compared with version 1."""
    root = tmp_path_factory.mktemp("diff")
    raw = deep_update(deep_update(yaml.safe_load(CHURN_PARAMS.read_text()), SMALL), FAST)
    raw = deep_update(raw, {"tracking": tracking_section(root)})
    raw["data"]["uri"] = str(CHURN_PARAMS.parents[1] / raw["data"]["uri"])
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    runs = root / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFOLIO_USER", "pytest")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        a = pipeline.run(params, stages=UP_TO_REGISTER, runs_root=runs, **QUIET)
        b = pipeline.run(
            params,
            {"training.logreg.C": 0.01},
            stages=UP_TO_REGISTER[:-1],
            runs_root=runs,
            **QUIET,
        )
    return Path(a.data["run_dir"]), Path(b.data["run_dir"])


@pytest.mark.slow
def test_diff_shows_the_changed_parameter_and_the_metric_deltas(two_runs, capsys):
    a, b = two_runs
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr()
    text = out.out
    assert "parameters: 1 differ\n  training.logreg.C: 1.0 -> 0.01\n" in text
    assert "packages: same versions" in text
    assert "  content hash: " in text and "  test rows: " in text
    lines = dict(line.split(maxsplit=1) for line in text.splitlines() if line.startswith("  "))
    assert lines["train"].startswith("different (parameters")
    assert lines["register"].startswith("only in A")
    # the parameter touches train onwards only (the mlfolio source may differ as well
    # when the checkout changed between the two runs)
    stages = {s["stage"]: s for s in diff.diff_runs(a, b)["stages"]}
    for name in ("ingest", "preprocess"):
        assert stages[name]["same"] or stages[name]["changed"] == ["mlfolio"], stages[name]
        assert lines[name].startswith("same" if stages[name]["same"] else "different (mlfolio)")
    roc = next(line for line in text.splitlines() if "logreg valid roc_auc" in line)
    va, vb, delta = (float(x) for x in roc.split()[-4:-1])
    assert va != vb and delta == pytest.approx(vb - va, abs=2e-4)
    assert roc.split()[-1] == ("better" if vb > va else "worse")
    assert "test rows: same (" in text
    assert "gate B: " in text and "compared with champion 1" in text
    page = b / f"diff-{a.name}.html"
    assert f"diff page: {page}" in out.err and page.is_file()


@pytest.mark.slow
def test_the_index_of_b_links_the_diff_against_the_champions_run(two_runs):
    a, b = two_runs
    index = (b / "index.html").read_text()
    assert f'id="champion-diff-link" href="diff-{a.name}.html"' in index
    assert (b / f"diff-{a.name}.html").is_file()
    # A compared with no champion: no link
    assert 'id="champion-diff"' not in (a / "index.html").read_text()


@pytest.mark.slow
def test_the_index_says_where_the_diff_is_when_the_champions_folder_is_gone(two_runs, tmp_path):
    from mlfolio.pipeline import report

    a, b = two_runs
    copy = tmp_path / b.name
    shutil.copytree(b, copy)
    (copy / f"diff-{a.name}.html").unlink()
    moved = a.with_name(a.name + "-moved")
    a.rename(moved)
    try:
        manifest = json.loads((copy / "manifest.json").read_text())
        page = report.write_index(copy, manifest).read_text()
    finally:
        moved.rename(a)
    assert "not written here: its run folder" in page
    assert f"mlfolio diff {a} " in page
    assert not (copy / f"diff-{a.name}.html").exists()


@pytest.mark.slow
def test_diff_html_shows_the_tables_in_chromium(two_runs, tmp_path):
    chromium = require_chromium()
    sync_api = require_module("playwright.sync_api", "the HTML pages are read in Chromium")
    a, b = two_runs
    page_file = tmp_path / "diff.html"
    assert main(["diff", str(a), str(b), "-o", str(page_file)]) == 0
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(page_file.as_uri())
            params = page.locator("#parameters tr")
            assert params.count() == 2  # header + the one changed key
            assert "training.logreg.C" in params.nth(1).inner_text()
            metric_rows = page.locator("#metrics tr")
            assert metric_rows.count() > 5
            assert page.locator("#metrics tr.changed").count() > 0
            # each delta is coloured and named by what is better for its metric
            rows = {
                tuple(cells[:3]): cells
                for cells in page.eval_on_selector_all(
                    "#metrics tr",
                    "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))",
                )[1:]
            }
            for metric in ("roc_auc", "log_loss", "brier"):
                cells = rows[("logreg", "valid", metric)]
                delta = float(cells[5])
                lower_better = metric in ("log_loss", "brier")
                want = (
                    "same" if delta == 0 else ("better" if (delta < 0) == lower_better else "worse")
                )
                assert cells[6] == want, (metric, cells)
                cell = page.locator(
                    f"#metrics tr:has(td:text-is('{metric}')):has(td:text-is('valid')) td.delta"
                ).first
                colour = cell.evaluate("e => getComputedStyle(e).color")
                assert (
                    colour
                    == {
                        "better": "rgb(26, 127, 55)",
                        "worse": "rgb(207, 34, 46)",
                        "same": "rgb(34, 34, 34)",
                    }[want]
                ), (metric, colour)
            threshold = rows[("candidate", "test", "threshold")]
            assert threshold[6] == "-"  # neither better nor worse
            legend = page.inner_text("#metrics-legend")
            assert "lower is better for log_loss and brier" in legend
            assert page.inner_text("#test-rows").startswith("Same test rows")
            assert page.locator("#stages tr").count() == 1 + 6  # header + stages of A or B
            assert "only in A" in page.locator("#stages tr", has_text="register").inner_text()
            assert page.locator("#data tr").count() >= 4
            assert page.locator("#gate .badge").count() == 2
            # self-contained: no request left the file
            assert page.evaluate("document.styleSheets.length") == 1
            # and the index of B opens it
            page.goto((b / "index.html").as_uri())
            page.click("#champion-diff-link")
            assert page.locator("h1").inner_text() == "What changed between two runs"
        finally:
            browser.close()


@pytest.mark.slow
def test_diff_says_when_the_test_metrics_come_from_different_test_rows(two_runs, tmp_path):
    """B's evaluate again in a copy whose test split lost 100 rows: its test metrics are
    of other rows than A's, and the diff says so before the deltas."""
    import pandas as pd

    a, b = two_runs
    other = tmp_path / b.name
    shutil.copytree(b, other)
    test = pd.read_parquet(other / "data/test.parquet")
    test.iloc[100:].to_parquet(other / "data/test.parquet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFOLIO_USER", "pytest")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        pipeline.run(
            a.parent.parent / "params.yaml",
            {"training.logreg.C": 0.01},
            stages=["evaluate"],
            run_dir=other,
            force=True,
            reuse=False,
            **QUIET,
        )
    ev_a = json.loads((a / "evaluate.json").read_text())
    ev_b = json.loads((other / "evaluate.json").read_text())
    assert ev_b["test_rows"]["rows"] == ev_a["test_rows"]["rows"] - 100
    assert ev_b["test_rows"]["digest"] != ev_a["test_rows"]["digest"]
    d = diff.diff_runs(a, other)
    assert d["test_rows"]["same"] is False
    text = diff.render_text(d)
    assert (
        f"test rows: DIFFERENT ({ev_a['test_rows']['rows']} vs {ev_b['test_rows']['rows']} "
        "rows): the test metrics of A and B are of different rows" in text
    )
    assert diff.diff_runs(a, b)["test_rows"]["same"] is True
    page_file = diff.write_html(d, tmp_path / "diff.html")
    chromium = require_chromium()
    sync_api = require_module("playwright.sync_api", "the HTML pages are read in Chromium")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(page_file.as_uri())
            warning = page.locator("#test-rows.warn")
            assert warning.inner_text().startswith(
                f"Different test rows: A's test metrics are of {ev_a['test_rows']['rows']} rows"
            )
            border = warning.evaluate("e => getComputedStyle(e).borderLeftColor")
            assert border == "rgb(207, 34, 46)"
        finally:
            browser.close()
