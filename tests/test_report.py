"""The reviewer's view: a real run's index.html and stage pages in headless Chromium.

Two real pipeline runs on small parameters (one succeeding, one failing in the train
stage), each once per module; then Playwright opens the HTML over file:// URLs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from mlfolio import pipeline
from mlfolio.errors import StageError

from .conftest import (
    CHURN_CSV,
    CHURN_PARAMS,
    ROOT,
    SMALL,
    deep_update,
    require_chromium,
    require_module,
    require_service,
    tracking_section,
)
from .team import _wait_http, free_port, stop

pytestmark = pytest.mark.slow

CHROMIUM = require_chromium()
sync_api = require_module("playwright.sync_api", "the HTML pages are read in Chromium")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# stage -> what its notebook's first heading starts with; stages whose pages carry plots
STAGE_HEADINGS = {
    "ingest": "Ingest",
    "preprocess": "Preprocess",
    "train": "Train",
    "tune": "Tune",
    "evaluate": "Evaluate",
    "register": "Register",
    "deploy": "Deploy",
}
STAGES_WITH_PLOTS = {"preprocess", "tune", "evaluate"}


# -- two real runs, once per module --------------------------------------------------------
def write_module_params(folder: Path, **sections: Any) -> Path:
    """What conftest's write_params does, for module-scoped fixtures."""
    raw = deep_update(yaml.safe_load(CHURN_PARAMS.read_text()), SMALL)
    tracking = folder / "tracking"
    tracking.mkdir()
    raw = deep_update(raw, {"tracking": tracking_section(tracking)})
    raw = deep_update(raw, sections)
    raw["data"]["uri"] = str(CHURN_CSV)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_pipeline(folder: Path, **sections: Any) -> tuple[Path, StageError | None]:
    """Run the real pipeline into folder/runs; return the run folder and any StageError."""
    params = write_module_params(folder, **sections)
    runs_root = folder / "runs"
    runs_root.mkdir()
    error: StageError | None = None
    with pytest.MonkeyPatch.context() as mp:  # as conftest's autouse fixture, module-wide
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFOLIO_USER", "pytest")
        try:
            pipeline.run(params, runs_root=runs_root, echo=lambda s: None)
        except StageError as exc:
            error = exc
    (run_dir,) = runs_root.iterdir()
    assert (run_dir / "index.html").is_file()
    return run_dir, error


# The index's MLflow links point here; the mlflow_ui fixture starts the UI the page prints.
UI_URL = f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    run_dir, error = run_pipeline(tmp_path_factory.mktemp("good"), tracking={"ui_url": UI_URL})
    assert error is None, f"the small run should succeed: {error}"
    return run_dir


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory) -> tuple[Path, StageError]:
    # LogisticRegression(C=-1): scikit-learn rejects the parameter when train fits it
    run_dir, error = run_pipeline(tmp_path_factory.mktemp("failed"), training={"logreg": {"C": -1}})
    assert error is not None, "C=-1 should make the train stage fail"
    return run_dir, error


# -- the browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(good_run, failed_run) -> Iterator[Any]:
    # both runs first: Chromium does not compete with the kernels for the two cores
    pw = sync_api.sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:
        pw.stop()
        require_service(f"Chromium at {CHROMIUM}", False, f"does not start under Playwright: {exc}")
    try:
        yield browser
    finally:
        browser.close()
        pw.stop()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    """A page with the network blocked: what a test reads must render from the run folder
    alone (a request that leaves the machine is aborted and fails the test)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    went_out: list[str] = []

    def offline(route: Any) -> None:
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            went_out.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not went_out, f"requests to the web: {went_out}"


def open_file(page: Any, path: Path) -> None:
    page.goto(path.as_uri(), wait_until="load")


def relative_links(page: Any) -> list[str]:
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    return [h for h in hrefs if not urlsplit(h).scheme and not h.startswith(("#", "//"))]


def assert_local_links_exist(page: Any, run_dir: Path) -> list[str]:
    links = relative_links(page)
    missing = [h for h in links if not (run_dir / unquote(urlsplit(h).path)).is_file()]
    assert not missing, f"index.html links to missing files: {missing}"
    return links


def stage_rows(page: Any) -> dict[str, dict[str, Any]]:
    """The stages table: name -> status text and the report link's href (or None)."""
    return page.eval_on_selector_all(
        "#stages tr:not(:first-child)",
        """rows => Object.fromEntries(
        rows.map(r => [r.cells[1].innerText.trim(), {
            status: r.cells[2].innerText.trim(),
            html: (r.querySelector('a.stage-html') || {getAttribute: () => null})
                  .getAttribute('href')}]))""",
    )


def image_sizes(page: Any) -> list[list[Any]]:
    page.wait_for_function("[...document.images].every(i => i.complete)")
    return page.eval_on_selector_all(
        "img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])"
    )


# -- the succeeded run ---------------------------------------------------------------------
def test_index_status_and_verdict(good_run, page):
    open_file(page, good_run / "index.html")
    assert good_run.name in page.title()
    assert page.inner_text("#run-status") == "succeeded"
    assert (
        page.eval_on_selector("#run-status", "e => getComputedStyle(e).backgroundColor")
        == "rgb(26, 127, 55)"
    )  # the green badge
    verdict = page.inner_text("#gate-verdict")
    assert re.search(r"\b(passed|not passed)\b", verdict)
    assert "churn-classifier" in verdict and re.search(r"version \d+", verdict)
    reasons = page.locator("#gate-reasons li")
    assert reasons.count() >= 1
    assert re.search(r"\d\.\d+", reasons.first.inner_text())
    assert page.locator("#failure").count() == 0
    assert page.inner_text("#data").count("4000") == 1


def test_index_metrics_table(good_run, page):
    open_file(page, good_run / "index.html")
    header = page.eval_on_selector_all(
        "#metrics tr:first-child th", "els => els.map(e => e.innerText.trim())"
    )
    assert header == ["model", "split", "roc_auc", "pr_auc", "log_loss", "brier", "f1"]
    rows = page.eval_on_selector_all(
        "#metrics tr:not(:first-child)",
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))",
    )
    models = [r[0] for r in rows]
    assert {"logreg", "xgboost"} <= set(models)
    assert any(m.endswith("(candidate)") for m in models)
    for row in rows:
        values = [float(v) for v in row[2:]]  # every metric is filled in, as a number
        assert 0.5 < values[0] <= 1.0, row  # roc_auc better than chance
        assert all(0.0 <= v <= 1.0 for v in (values[1], values[3], values[4])), row
    candidate = next(r for r in rows if r[0].endswith("(candidate)"))
    assert candidate[1] == "test"


def test_index_stage_rows_link_existing_pages(good_run, page):
    open_file(page, good_run / "index.html")
    rows = stage_rows(page)
    assert list(rows) == list(STAGE_HEADINGS)
    for name, row in rows.items():
        assert row["status"] == "succeeded", name
        assert row["html"], f"stage {name} has no report link"
        assert (good_run / row["html"]).is_file(), row["html"]


def test_index_has_no_broken_local_links(good_run, page):
    open_file(page, good_run / "index.html")
    links = assert_local_links_exist(page, good_run)
    assert {"manifest.json", "parameters.yaml", "stage_parameters.yaml"} <= set(links)
    # each stage's page and notebook (the Data section links the ingest page again)
    assert len({link for link in links if link.endswith(".html")}) == len(STAGE_HEADINGS)
    assert sum(link.endswith(".ipynb") for link in links) == len(STAGE_HEADINGS)


def test_following_stage_links(good_run, page):
    index = good_run / "index.html"
    open_file(page, index)
    hrefs = {name: row["html"] for name, row in stage_rows(page).items()}
    for name, href in hrefs.items():
        open_file(page, index)
        with page.expect_navigation(wait_until="load"):
            page.click(f"a.stage-html[href='{href}']")
        assert page.url == (good_run / href).as_uri()
        assert name in page.title().lower(), (name, page.title())
        heading = page.inner_text("h1")
        assert heading.startswith(STAGE_HEADINGS[name]), (name, heading)
        text = page.inner_text("body")
        assert "Traceback" not in text, f"{name}: an error output on a succeeded stage"
        sizes = image_sizes(page)
        if name in STAGES_WITH_PLOTS:
            assert sizes, f"{name}: expected plots"
        for width, height in sizes:
            assert width > 0 and height > 0, f"{name}: an image did not load"


def test_screenshot(good_run, page, tmp_path):
    open_file(page, good_run / "index.html")
    shot = tmp_path / "index.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get("MLFOLIO_SCREENSHOT")  # keep it, to look at by hand
    if target:
        Path(target).write_bytes(shot.read_bytes())


def test_index_says_how_to_open_the_mlflow_links(good_run, page):
    manifest = yaml.safe_load((good_run / "manifest.json").read_text())
    open_file(page, good_run / "index.html")
    link = page.locator("#mlflow-run")
    assert link.inner_text() == manifest["mlflow"]["parent_run_name"]
    assert link.get_attribute("href").startswith(f"{UI_URL}/#/experiments/")
    store = manifest["mlflow"]["tracking_uri"]
    assert store.startswith("sqlite:////")  # absolute: the command works from any folder
    port = UI_URL.rsplit(":", 1)[1]
    assert page.inner_text("#mlflow-ui") == (
        f"(the links open the MLflow UI at {UI_URL}: start it from {ROOT} with "
        f".venv/bin/mlflow ui --backend-store-uri {store} --port {port} --workers 1)"
    )


# -- the MLflow UI the index page prints, and its links in it --------------------------------
@pytest.fixture(scope="module")
def mlflow_ui(good_run, browser, tmp_path_factory) -> Iterator[str]:
    """The index's ``mlflow ui`` command, run as printed from the folder it names (a real
    subprocess); yields the URL the page says the links open, once it answers."""
    context = browser.new_context()
    try:
        page = context.new_page()
        open_file(page, good_run / "index.html")
        command = page.inner_text("#mlflow-ui-command")
        cwd = page.inner_text("#mlflow-ui-cwd")
    finally:
        context.close()
    log = tmp_path_factory.mktemp("mlflow-ui") / "ui.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            shlex.split(command),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"{UI_URL}/health", proc, log, timeout=180)
        yield UI_URL
    finally:
        stop(proc)


def test_the_printed_mlflow_ui_command_serves_the_runs_store(good_run, mlflow_ui):
    import httpx

    manifest = json.loads((good_run / "manifest.json").read_text())
    page = httpx.get(mlflow_ui, timeout=30)
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text
    run = httpx.get(
        f"{mlflow_ui}/ajax-api/2.0/mlflow/runs/get",
        params={"run_id": manifest["mlflow"]["parent_run_id"]},
        timeout=30,
    )
    assert run.status_code == 200, run.text
    assert run.json()["run"]["info"]["run_name"] == manifest["mlflow"]["parent_run_name"]


def ui_context(browser: Any) -> Any:
    """A fresh browser (the UI remembers its last view in local storage) that may reach the
    loopback MLflow UI and nothing else."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})

    def loopback_only(route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if url.startswith(("file:", "data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", loopback_only)
    return context


@pytest.mark.parametrize("link", ["#mlflow-experiment", "#mlflow-run", "a.mlflow-stage-run"])
def test_index_mlflow_links_open_the_model_training_view(good_run, mlflow_ui, browser, link):
    """Followed from the index page in Chromium, every MLflow link lands on MLflow 3's
    model-training view (runs table, run page), never the GenAI view it opens by default
    (Overview with traces and token usage)."""
    manifest = json.loads((good_run / "manifest.json").read_text())
    context = ui_context(browser)
    try:
        page = context.new_page()
        open_file(page, good_run / "index.html")
        target = page.locator(link).first
        href = target.get_attribute("href")
        assert href.startswith(f"{mlflow_ui}/#/experiments/{manifest['mlflow']['experiment_id']}")
        with page.expect_navigation(wait_until="load"):
            target.click()
        if link == "a.mlflow-stage-run":
            first_stage = next(iter(manifest["stages"]))
            expect_name = first_stage
        else:
            expect_name = manifest["mlflow"]["parent_run_name"]
        # the run's name (model training) or the GenAI view's navigation, whichever renders
        shown = page.get_by_text(expect_name).or_(page.get_by_text("Observability"))
        shown.first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        text = page.inner_text("body")
        for genai in ("Observability", "Token Usage", "Training runs"):
            assert genai not in text, f"{link}: the GenAI view ({genai!r}) at {page.url}"
        assert "workflowType=machine_learning" in page.url, page.url
        if link == "#mlflow-experiment":
            assert "/runs?" in page.url and "Run Name" in text  # the runs table
        else:
            run_id = href.rsplit("/runs/", 1)[1].split("?")[0]
            assert f"/runs/{run_id}" in page.url and "Model metrics" in text
    finally:
        context.close()


def test_mlflow_ui_screenshots_tool(good_run, mlflow_ui):
    """tools/mlflow_ui_screenshots.py starts its own ``mlflow ui`` on the run's store, follows
    the index's links and writes PNGs of the model-training views into the run folder."""
    shots = good_run / "screenshots"
    for old in shots.glob("mlflow-*.png"):
        old.unlink()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mlflow_ui_screenshots.py"), str(good_run)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    for name, line in zip(("experiment", "run"), lines, strict=True):
        path, url = line.split("  (")
        assert Path(path) == shots / f"mlflow-{name}.png"
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(path).stat().st_size > 20_000, path
        assert "workflowType=machine_learning" in url and not url.startswith(mlflow_ui), url
    target = os.environ.get("MLFOLIO_SCREENSHOT_DIR")  # keep them, to look at by hand
    if target:
        for png in shots.glob("mlflow-*.png"):
            (Path(target) / png.name).write_bytes(png.read_bytes())


def test_pages_load_nothing_from_the_web(good_run, failed_run, browser, tmp_path):
    """Offline: every request that is not file:// or loopback is aborted and recorded.
    The index, every stage page and a diff page must ask for none and still render."""
    from mlfolio.pipeline import diff

    diff_page = diff.write_html(diff.diff_runs(failed_run[0], good_run), tmp_path / "diff.html")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    went_out: list[str] = []

    def offline(route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if url.startswith(("file:", "data:")) or host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            went_out.append(url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    try:
        open_file(page, good_run / "index.html")
        assert page.locator("#metrics tr").count() > 3 and page.locator("#stages tr").count() == 8
        for name in STAGE_HEADINGS:
            html_page = good_run / f"{list(STAGE_HEADINGS).index(name) + 1:02d}_{name}.html"
            source = html_page.read_text()
            assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?:", source), name
            open_file(page, html_page)
            assert page.inner_text("h1").startswith(STAGE_HEADINGS[name])
            sizes = image_sizes(page)
            assert all(w > 0 and h > 0 for w, h in sizes), name
            assert (name not in STAGES_WITH_PLOTS) or sizes, f"{name}: expected plots"
        assert page.locator("table").count() >= 1  # deploy's table of targets
        open_file(page, diff_page)
        assert page.locator("table").count() >= 2
    finally:
        context.close()
    assert went_out == [], f"requests to the web: {went_out}"


def test_library_logs_go_to_the_run_log_not_the_page(good_run):
    """Optuna's trial lines and MLflow's and scikit-learn's warnings are in
    logs/<stage>.log; the only stderr a notebook shows is mlfolio's own warnings."""
    import nbformat

    shown: dict[str, list[str]] = {}
    for notebook in sorted(good_run.glob("*.ipynb")):
        nb = nbformat.read(notebook, as_version=4)
        shown[notebook.name] = [
            line
            for cell in nb.cells
            for out in cell.get("outputs", [])
            if out.get("output_type") == "stream" and out.get("name") == "stderr"
            for line in out["text"].splitlines()
            if line.strip()
        ]
    foreign = {
        nb: [ln for ln in lines if not ln.startswith("WARNING mlfolio.")]
        for nb, lines in shown.items()
    }
    assert not any(foreign.values()), foreign
    logs = {p.stem: p.read_text() for p in (good_run / "logs").glob("*.log")}
    assert set(STAGE_HEADINGS) <= set(logs), sorted(logs)
    assert re.search(r"INFO optuna\S*: Trial 0 finished with value", logs["tune"])
    assert "WARNING mlflow.sklearn: Saving scikit-learn models" in logs["train"]
    assert any("WARNING py.warnings:" in text for text in logs.values())  # warnings.warn
    cells = nbformat.read(good_run / "04_tune.ipynb", as_version=4).cells
    setup = next(c for c in cells if "setup" in c.metadata.get("tags", []))
    text = "".join(o.get("text", "") for o in setup.outputs)
    assert f"library logs and warnings: {good_run / 'logs' / 'tune.log'}" in text


# -- the failed run ------------------------------------------------------------------------
def test_failed_run_error(failed_run):
    run_dir, error = failed_run
    assert error.stage == "train"
    assert error.cell_index is not None
    assert "'C' parameter" in str(error)


def test_failed_run_index_names_stage(failed_run, page):
    run_dir, _ = failed_run
    open_file(page, run_dir / "index.html")
    assert page.inner_text("#run-status") == "failed"
    failure = page.inner_text("#failure")
    assert re.search(r"stage train, cell \d+", failure), failure
    assert page.get_attribute("#failure a", "href") == "03_train.html"
    error_text = page.inner_text("#failure-error")  # the exception, on the index itself
    assert error_text.startswith("InvalidParameterError: The 'C' parameter of LogisticRegr")
    rows = stage_rows(page)
    assert {n: r["status"] for n, r in rows.items()} == {
        "ingest": "succeeded",
        "preprocess": "succeeded",
        "train": "failed",
        "tune": "not run",
        "evaluate": "not run",
        "register": "not run",
        "deploy": "not run",
    }
    assert rows["train"]["html"] == "03_train.html"
    assert all(rows[n]["html"] is None for n in ("tune", "evaluate", "register"))
    assert "No verdict" in page.inner_text("body")
    assert_local_links_exist(page, run_dir)


def test_failed_stage_page_shows_error(failed_run, page):
    run_dir, error = failed_run
    open_file(page, run_dir / "index.html")
    with page.expect_navigation(wait_until="load"):
        page.click("#failure a")
    assert page.url == (run_dir / "03_train.html").as_uri()
    assert page.inner_text("h1").startswith("Train")
    text = page.inner_text("body")
    assert "InvalidParameterError" in text
    assert "The 'C' parameter of LogisticRegression must be" in text
    assert "Got -1 instead" in text
    # the error output is rendered as an error, not only as source code
    assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() >= 1


def test_index_says_what_each_deployment_really_did(good_run, page):
    """The local server was checked, then stopped; the manifests were written, not
    applied: the page never calls either deployed, and says that nothing serves."""
    open_file(page, good_run / "index.html")
    local = page.inner_text("#deploy-local")
    assert page.inner_text("#deploy-local .badge") == "checked, then stopped"
    assert "rows_checked" in local and "answers_match_pipeline" in local
    assert page.inner_text("#deploy-kubernetes .badge") == "manifests written (not applied)"
    assert "deployed" not in page.inner_text("#deployments").lower()
    assert page.inner_text("#deploy-live") == (
        "Nothing serves version 1 from this run: local checked, then stopped; "
        "kubernetes manifests written (not applied)."
    )


# -- what the run costs (cost.json, the index section, mlfolio cost) -------------------------
def test_the_run_says_what_it_costs(good_run, page, capsys):
    """Each stage's measured CPU time and peak memory, priced on the instance that fits it:
    in cost.json, on the index page, and as mlfolio cost prints it."""
    from mlfolio import cli, cost

    m = json.loads((good_run / "manifest.json").read_text())
    doc = json.loads((good_run / "cost.json").read_text())
    executed = [n for n, s in m["stages"].items() if s["status"] == "succeeded"]
    assert [r["stage"] for r in doc["stages"]] == executed
    for row in doc["stages"]:
        entry = m["stages"][row["stage"]]
        # the CPU time of the stage's kernel (and its children) between its start and its
        # last cell: within what its cores could do in its wall time
        assert 0 <= entry["cpu_s"] <= 2 * entry["duration_s"] + 1, entry
        assert row["cpu_s"] == entry["cpu_s"] and row["peak_rss_mb"] == entry["peak_rss_mb"]
        assert row["instance"] in cost.load().training and row["on_demand_usd"] > 0
    assert sum(m["stages"][n]["cpu_s"] for n in executed) > 1.0  # they did work
    assert doc["prices"]["region"] == "us-east-1" and doc["prices"]["published"]
    assert doc["serving"]["break_even"]["configured"]["instance"] == "ml.m5.large"

    open_file(page, good_run / "index.html")
    assert page.inner_text("#cost").startswith("What this run costs")
    shown = page.eval_on_selector_all("#cost-stages tr[id^='cost-']", "els => els.map(e => e.id)")
    assert shown == [f"cost-{n}" for n in executed] + ["cost-total"]
    total = page.inner_text("#cost-total").split("\t")
    assert total[-2] == f"${doc['total']['on_demand_usd']:.6f}", total
    assert "Serverless" not in page.inner_text("#cost-serving-options")  # the options as named
    assert "serverless inference (1024 MB)" in page.inner_text("#cost-serving-options")
    assert page.locator("#cost-break-even li").count() == 4

    assert cli.main(["cost", str(good_run), "--rps", "1", "--duration-ms", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"what {good_run.name} costs on AWS (us-east-1")
    assert [line.split()[0] for line in out[2 : 2 + len(executed)]] == executed
    assert any(line.startswith("break-even vs serverless: ") for line in out)
    # the default model's request duration and memory, measured by serving it
    assert cli.main(["cost", str(good_run), "--measure", "--json"]) == 0
    serving = json.loads(capsys.readouterr().out)["serving"]
    assert serving["duration_source"].startswith("measured") and serving["duration_ms"] > 0
    assert 100 < serving["memory_mb"] < 4000, serving  # pandas alone: > 100 MB


# -- why the model decides (index and evaluate page) ----------------------------------------
def test_index_explains_why_the_model_decides(good_run, page):
    open_file(page, good_run / "index.html")
    header = page.eval_on_selector_all(
        "#top-features tr:first-child th", "els => els.map(e => e.innerText.trim())"
    )
    assert header[0] == "#" and header[1].endswith("(candidate)") and len(header) == 2
    top = page.eval_on_selector_all(
        "#top-features td.feature-candidate", "els => els.map(e => e.innerText.split(' ')[0])"
    )
    assert len(top) == 5 and {"contract", "tenure"} & set(top[:3]), top
    ev = json.loads((good_run / "evaluate.json").read_text())
    assert f"candidate {ev['threshold']:.3f}" in page.inner_text("#thresholds")
    # no champion before this run: the segments are analysed, nothing to flag against
    assert page.inner_text("#segments-flagged").startswith("No champion to compare with")
    assert page.get_attribute("#model-card-link", "href") == "model_card.md"
    card = (good_run / "model_card.md").read_text()
    assert card.startswith("# Model card: churn-classifier version 1")
    assert ev["candidate"]["model_uri"] in card and "## Limitations" in card


def test_evaluate_page_shows_the_explanations(good_run, page):
    open_file(page, good_run / "05_evaluate.html")
    headings = page.eval_on_selector_all("h3", "els => els.map(e => e.innerText.trim())")
    for heading in (
        "Why the model decides: feature importance",
        "Curves and confusion matrices (test rows)",
        "Why this threshold",
        "Error analysis by segment",
        "Model card",
    ):
        assert any(h.startswith(heading) for h in headings), (heading, headings)
    sizes = image_sizes(page)  # importance, curves, threshold curve
    assert len(sizes) >= 3 and all(w > 300 and h > 200 for w, h in sizes), sizes
    text = page.inner_text("body")
    assert "Month-to-month" in text and "permutation importance" in text
    assert page.locator("a[href='model_card.md']").count() == 1
    shot = os.environ.get("MLFOLIO_SCREENSHOT_EVALUATE")  # keep it, to look at by hand
    if shot:
        page.screenshot(path=shot, full_page=True)


@pytest.fixture(scope="module")
def against_champion(good_run, tmp_path_factory) -> Path:
    """evaluate again in a copy of the good run, now that its model is champion v1, at a
    threshold of its own (one stage, not a new pipeline run)."""
    import shutil

    run_dir = tmp_path_factory.mktemp("against") / good_run.name
    shutil.copytree(good_run, run_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFOLIO_USER", "pytest")
        pipeline.run(
            good_run.parent.parent / "params.yaml",
            {"evaluation.threshold": 0.3},
            stages=["evaluate"],
            run_dir=run_dir,
            force=True,
            reuse=False,
            echo=lambda s: None,
        )
    return run_dir


def test_champion_is_shown_at_its_own_threshold_beside_the_candidate(
    good_run, against_champion, page
):
    v1 = json.loads((good_run / "evaluate.json").read_text())["threshold"]
    ev = json.loads((against_champion / "evaluate.json").read_text())
    assert ev["threshold"] == 0.3 and ev["champion"]["version"] == "1"
    assert ev["champion"]["threshold"] == pytest.approx(v1, abs=1e-6)
    open_file(page, against_champion / "index.html")
    header = page.eval_on_selector_all(
        "#top-features tr:first-child th", "els => els.map(e => e.innerText.trim())"
    )
    assert header[1].endswith("(candidate)") and header[2] == "champion v1"
    champion_top = page.eval_on_selector_all(
        "#top-features td.feature-champion", "els => els.map(e => e.innerText.split(' ')[0])"
    )
    assert len(champion_top) == 5
    # the candidate is champion v1's own model: said so, not a failed +0.0000 gain
    assert ev["gate"]["same_model_as"] == "1"
    assert page.inner_text("#gate-verdict .badge") == "same model as champion v1"
    from mlfolio.pipeline import diff

    d = diff.diff_runs(good_run, against_champion)
    assert "gate B: same model as champion v1;" in diff.render_text(d)
    assert d["test_rows"]["same"] is True  # the same rows, at another threshold
    thresholds = page.inner_text("#thresholds")
    assert "candidate 0.300" in thresholds and f"champion v1 {v1:.3f}" in thresholds
    # the same model on the same rows ranks no segment worse; the rule is stated, and a
    # segment with too few positives is named as not judged
    segments = page.inner_text("#segments-flagged")
    assert "none flagged" in segments
    judged = [r for r in ev["segments"]["rows"] if r["judged"]]
    assert judged and all(r["difference"]["difference"] == 0 for r in judged)
    assert (
        f"{len(judged)} of {len(ev['segments']['rows'])} segments judged: worse only where "
        "the paired bootstrap interval of the ROC AUC difference lies below 0"
    ) in segments
    for r in ev["segments"]["rows"]:
        if not r["judged"]:
            assert f"{r['column']} = {r['value']} ({r['positives']} positive" in segments
    # on how many rows the champion was compared: all test rows (it never saw them)
    rows = ev["rows_unseen_by_champion"]
    assert rows == ev["champion_overlap"]["test_rows"] and ev["champion_overlap"]["found"] == 0
    assert page.inner_text("#gate-rows").startswith(
        f"Compared with champion v1 only on rows it never trained, tuned or chose its "
        f"threshold on: {rows} of the {rows} test rows (0 it had seen left out, 0 remain;"
    )
    assert page.inner_text("#row-set-unseen_test").split("\t")[:3] == [
        "test rows the champion never saw",
        str(rows),
        str(ev["row_sets"]["unseen_test"]["positives"]),
    ]
    assert page.locator("#row-set-out_of_time").count() == 0  # no recent rows given
    assert "decides the gate" in page.inner_text("#row-set-unseen_test")
    open_file(page, against_champion / "05_evaluate.html")
    text = page.inner_text("body")
    assert f"Compared with the champion on {rows} of {rows} test rows" in text
    assert f"champion v1: {v1:.4f} (tag mlfolio.threshold)" in text
    assert "champion roc_auc" in text
    assert text.count("candidate worse") == 1  # the rule's statement; no segment's verdict
    assert "ROC AUC difference (95% CI)" in text and "+0.000 (+0.000 .. +0.000)" in text
    assert "no clear difference" in text
    assert len(image_sizes(page)) >= 3
