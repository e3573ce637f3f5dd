"""Full-page screenshots of a run folder's pages, taken offline in headless Chromium.

    .venv/bin/python tools/screenshot.py runs/<run> [--page index.html --page 05_evaluate.html]

Writes ``<run>/screenshots/<page>.png``; any request that leaves the machine is blocked
and named (the pages must not need the network).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DEFAULT_PAGES = ("index.html", "05_evaluate.html")


def screenshot(run_dir: Path, pages: list[str], width: int = 1280) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out = run_dir / "screenshots"
    out.mkdir(exist_ok=True)
    written, blocked = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": width, "height": 900})

        def route(r):
            if r.request.url.startswith(("file://", "data:")):
                return r.continue_()
            blocked.append(r.request.url)
            return r.abort()

        page.route("**/*", route)
        for name in pages:
            source = run_dir / name
            if not source.exists():
                print(f"skipped {name}: not in {run_dir}", file=sys.stderr)
                continue
            page.goto(source.resolve().as_uri(), wait_until="load")
            target = out / (Path(name).stem + ".png")
            page.screenshot(path=str(target), full_page=True)
            written.append(target)
        browser.close()
    for url in blocked:
        print(f"blocked a request to the network: {url}", file=sys.stderr)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--page", action="append", help="page in the run folder (repeatable)")
    args = parser.parse_args()
    for path in screenshot(args.run_dir, args.page or list(DEFAULT_PAGES)):
        print(path)


if __name__ == "__main__":
    main()
