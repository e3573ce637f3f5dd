"""Screenshots of the MLflow UI reached from a run folder's index page, in headless Chromium.

    .venv/bin/python tools/mlflow_ui_screenshots.py runs/<run> [--ui-url http://127.0.0.1:5000]

Without ``--ui-url`` it starts ``mlflow ui`` on the run's tracking store (from manifest.json)
on a free loopback port, one worker, and stops it at the end; with a tracking server as the
store, that server is used. It opens ``index.html``, follows its MLflow links (the
experiment and the pipeline run, pointed at that UI), waits for each view to render and
writes ``<run>/screenshots/mlflow-experiment.png`` and ``mlflow-run.png``, printing each
path and the URL the UI settled on. It fails, naming the page, when a view is not MLflow's
model-training view (the GenAI view shows Observability and Token Usage). Requests that
leave the machine are blocked and named.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

LINKS = {"experiment": "#mlflow-experiment", "run": "#mlflow-run"}
GENAI_ONLY = ("Observability", "Token Usage")  # the GenAI view's navigation and overview
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


class ScreenshotError(Exception):
    """A page did not render, or rendered another view than model training."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise ScreenshotError(f"mlflow ui did not answer {url}:\n{log.read_text()[-2000:]}")


@contextmanager
def mlflow_ui(tracking_uri: str, timeout: float = 180.0) -> Iterator[str]:
    """``mlflow ui`` serving ``tracking_uri`` on a free loopback port; yields its URL."""
    port = _free_port()
    exe = Path(os.path.abspath(sys.executable)).parent / "mlflow"
    args = [str(exe) if exe.is_file() else "mlflow", "ui", "--backend-store-uri", tracking_uri]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "mlflow-ui.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(f"{url}/health", proc, log, timeout)
            yield url
        finally:
            if proc.poll() is None:  # uvicorn's workers are in its process group
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _rebase(href: str, index_ui: str, ui: str) -> str:
    """The index's link, pointed at the UI actually serving the store."""
    if index_ui and href.startswith(index_ui):
        return ui.rstrip("/") + href[len(index_ui) :]
    return href


def _view_problem(page, text: str) -> str | None:
    """Why the page is not the model-training view (None when it is)."""
    query = urlsplit(page.url).fragment
    if "workflowType=machine_learning" not in query:
        return f"the UI settled on {page.url}, not the model-training view"
    shown = [word for word in GENAI_ONLY if word in text]
    return f"the page shows the GenAI view's {shown}" if shown else None


def screenshot(
    run_dir: Path, ui_url: str | None = None, width: int = 1440, settle_s: float = 60.0
) -> list[tuple[Path, str]]:
    """Screenshot the index's MLflow links; returns (png, final URL) per link."""
    from playwright.sync_api import sync_playwright

    manifest = json.loads((run_dir / "manifest.json").read_text())
    mlf = manifest.get("mlflow") or {}
    store = mlf.get("tracking_uri")
    if not store or not mlf.get("parent_run_id"):
        raise ScreenshotError(f"{run_dir / 'manifest.json'}: no MLflow run recorded")
    index_ui = ((manifest.get("parameters") or {}).get("tracking") or {}).get("ui_url", "")
    index_ui = index_ui.rstrip("/")
    if ui_url is None and store.startswith(("http://", "https://")):
        ui_url = store
    server = mlflow_ui(store) if ui_url is None else _given(ui_url)
    out = run_dir / "screenshots"
    out.mkdir(exist_ok=True)
    written: list[tuple[Path, str]] = []
    blocked: list[str] = []
    run_name = mlf.get("parent_run_name") or mlf["parent_run_id"]
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with server as ui, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            index = browser.new_page()
            index.goto((run_dir / "index.html").resolve().as_uri(), wait_until="load")
            hrefs = {}
            for name, selector in LINKS.items():
                if index.locator(selector).count() == 0:
                    raise ScreenshotError(f"{run_dir / 'index.html'}: no {selector} link")
                hrefs[name] = _rebase(index.get_attribute(selector, "href"), index_ui, ui)
            for name, href in hrefs.items():
                # a new context each time: the UI remembers the last view in local storage
                context = browser.new_context(viewport={"width": width, "height": 900})

                def route(r, blocked=blocked):
                    host = urlsplit(r.request.url).hostname or ""
                    if r.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
                        return r.continue_()
                    blocked.append(r.request.url)
                    return r.abort()

                context.route("**/*", route)
                page = context.new_page()
                page.goto(href, wait_until="load")
                page.get_by_text(run_name).first.wait_for(timeout=settle_s * 1000)
                page.wait_for_timeout(1500)  # the tables and charts settle after the name
                problem = _view_problem(page, page.inner_text("body"))
                target = out / f"mlflow-{name}.png"
                page.screenshot(path=str(target))
                settled = page.url
                context.close()
                if problem:
                    raise ScreenshotError(f"{name} link {href}: {problem} (see {target})")
                written.append((target, settled))
        finally:
            browser.close()
    for url in blocked:
        print(f"blocked a request to the network: {url}", file=sys.stderr)
    return written


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--ui-url", help="an MLflow UI already serving the run's store (default: start one)"
    )
    args = parser.parse_args()
    try:
        shots = screenshot(args.run_dir, args.ui_url)
    except ScreenshotError as exc:
        sys.exit(f"mlflow_ui_screenshots: {exc}")
    for path, url in shots:
        print(f"{path}  ({url})")


if __name__ == "__main__":
    main()
