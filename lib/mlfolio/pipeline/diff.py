"""``mlfolio diff RUN_A RUN_B``: what changed between two run folders, read from their
records (manifest.json and the stage products): parameters, data, code, packages,
per-stage input hashes, metrics with deltas, the gate verdict. As text for the terminal
and as a self-contained ``diff.html`` (:func:`write_html`).

The index page of a run whose candidate was compared with a champion links the diff
against the champion's run (:func:`champion_diff`).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from mlfolio import products
from mlfolio.graph import PIPELINES
from mlfolio.pipeline.manifest import Manifest

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "diff.html.j2"
INPUT_PARTS = ("notebook", "mlfolio", "parameters", "upstream")  # provenance.stage_inputs


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (lists stay values)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _pairs(a: dict[str, Any], b: dict[str, Any], only_changed: bool) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(a) | set(b)):
        same = a.get(key) == b.get(key)
        if not (only_changed and same):
            rows.append({"key": key, "a": a.get(key), "b": b.get(key), "same": same})
    return rows


def _metrics(run_dir: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(model, split) → metrics, from the train, tune and evaluate products."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for product in (products.TRAIN, products.TUNE):
        doc = product.load(run_dir)
        for name, model in (doc.models if doc else {}).items():
            out[(name, "valid")] = dict(model.valid)
    ev = products.EVALUATE.load(run_dir)
    if ev is not None:
        out[("candidate", "test")] = dict(ev.candidate.test)
        if ev.champion:
            out[("champion", "test")] = dict(ev.champion.test)
    return out


# Which way a metric improves: +1 higher is better, -1 lower is better (absent: neither,
# e.g. the threshold).
DIRECTION = {
    "roc_auc": 1,
    "pr_auc": 1,
    "accuracy": 1,
    "precision": 1,
    "recall": 1,
    "f1": 1,
    "log_loss": -1,
    "brier": -1,
}


def compared(metric: str, delta: float | None) -> str | None:
    """B against A for ``metric``: better, worse or same; None when the metric has no
    better side (the threshold) or a side is missing or undefined."""
    if delta is None or metric not in DIRECTION:
        return None
    if delta == 0:
        return "same"
    return "better" if delta * DIRECTION[metric] > 0 else "worse"


def _metric_rows(a: Path, b: Path) -> list[dict[str, Any]]:
    ma, mb = _metrics(a), _metrics(b)
    rows = []
    for model, split in sorted(set(ma) | set(mb), key=lambda k: (k[1] != "test", k)):
        va, vb = ma.get((model, split), {}), mb.get((model, split), {})
        for metric in sorted(set(va) | set(vb)):
            x, y = va.get(metric), vb.get(metric)
            delta = y - x if x is not None and y is not None else None
            # recorded as None: undefined (precision with no predicted positive), not absent
            x = "n/a" if metric in va and x is None else x
            y = "n/a" if metric in vb and y is None else y
            rows.append(
                {
                    "model": model,
                    "split": split,
                    "metric": metric,
                    "a": x,
                    "b": y,
                    "delta": delta,
                    "compared": compared(metric, delta),
                }
            )
    return rows


def test_rows(run_dir: Path) -> dict[str, Any] | None:
    """Which rows a run's test metrics are of: evaluate.json's ``test_rows`` (rows and a
    content digest), else the digest of the run's ``data/test.parquet`` (runs from before
    it was recorded); None when neither is there."""
    ev = products.EVALUATE.load(run_dir)
    recorded = (ev.model_extra or {}).get("test_rows") if ev is not None else None
    if recorded:
        return {"rows": recorded["rows"], "digest": recorded["digest"], "from": "evaluate.json"}
    path = run_dir / products.SPLITS["test"].path
    if ev is None or not path.is_file():
        return None
    import pandas as pd

    from mlfolio import data

    frame = pd.read_parquet(path)
    return {"rows": len(frame), "digest": data.content_hash(frame), "from": path.name}


def _test_rows(a: Path, b: Path) -> dict[str, Any]:
    ta, tb = test_rows(a), test_rows(b)
    same = ta["digest"] == tb["digest"] if ta and tb else None
    return {"a": ta, "b": tb, "same": same}


def _split_rows(run_dir: Path) -> dict[str, Any]:
    doc = products.PREPROCESS.load(run_dir)
    # the split table went through a DataFrame: its counts come back as floats
    return {name: int(row["rows"]) for name, row in (doc.splits if doc else {}).items()}


def _stage_rows(ma: dict[str, Any], mb: dict[str, Any]) -> list[dict[str, Any]]:
    kind = ma.get("kind", "training")
    order = [s.name for s in PIPELINES.get(kind, ())]
    names = [*order, *sorted((set(ma["stages"]) | set(mb["stages"])) - set(order))]
    rows = []
    for name in names:
        sa, sb = ma["stages"].get(name) or {}, mb["stages"].get(name) or {}
        if not sa and not sb:
            continue
        ia, ib = sa.get("inputs") or {}, sb.get("inputs") or {}
        changed = [p for p in INPUT_PARTS if ia.get(p) != ib.get(p)] if ia and ib else []
        rows.append(
            {
                "stage": name,
                "status_a": sa.get("status", "not run"),
                "status_b": sb.get("status", "not run"),
                "hash_a": sa.get("inputs_hash"),
                "hash_b": sb.get("inputs_hash"),
                "same": sa.get("inputs_hash") == sb.get("inputs_hash"),
                "compared": bool(sa.get("inputs_hash") and sb.get("inputs_hash")),
                "changed": changed,
                "reused_from_a": sa.get("reused_from"),
                "reused_from_b": sb.get("reused_from"),
            }
        )
    return rows


def _gate(m: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    ev = products.EVALUATE.load(run_dir)
    model = m.get("model") or {}
    return {
        "passed": ev.gate.passed if ev else None,
        "same_model_as": ev.gate.same_model_as if ev else None,
        "reasons": list(ev.gate.reasons) if ev else [],
        "candidate": ev.candidate.name if ev else None,
        "champion": ev.champion.version if ev and ev.champion else None,
        "version": model.get("version"),
        "promoted": model.get("promoted"),
    }


def diff_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Everything :func:`render_text` and :func:`write_html` show, as plain data."""
    a, b = Path(run_a).resolve(), Path(run_b).resolve()
    ma, mb = Manifest.load(a).data, Manifest.load(b).data
    data_a, data_b = ma.get("data") or {}, mb.get("data") or {}
    rows_a, rows_b = _split_rows(a), _split_rows(b)
    data = [
        {"key": "content hash", "a": ma.get("data_hash"), "b": mb.get("data_hash")},
        {"key": "source", "a": data_a.get("source"), "b": data_b.get("source")},
        {"key": "rows", "a": data_a.get("rows"), "b": data_b.get("rows")},
        *(
            {"key": f"{split} rows", "a": rows_a.get(split), "b": rows_b.get(split)}
            for split in sorted(set(rows_a) | set(rows_b))
        ),
    ]
    for row in data:
        row["same"] = row["a"] == row["b"]
    git_a, git_b = ma.get("git") or {}, mb.get("git") or {}
    code = [
        {
            "key": key,
            "a": git_a.get(key),
            "b": git_b.get(key),
            "same": git_a.get(key) == git_b.get(key),
        }
        for key in ("commit", "dirty")
    ]
    return {
        "a": {
            "name": a.name,
            "dir": str(a),
            "created": ma.get("created"),
            "status": ma.get("status"),
        },
        "b": {
            "name": b.name,
            "dir": str(b),
            "created": mb.get("created"),
            "status": mb.get("status"),
        },
        "experiment": [ma.get("experiment"), mb.get("experiment")],
        "parameters": _pairs(
            _flat(ma.get("parameters") or {}), _flat(mb.get("parameters") or {}), True
        ),
        "data": data,
        "code": code,
        "packages": _pairs(ma.get("packages") or {}, mb.get("packages") or {}, False),
        "stages": _stage_rows(ma, mb),
        "metrics": _metric_rows(a, b),
        "test_rows": _test_rows(a, b),
        "gate": {"a": _gate(ma, a), "b": _gate(mb, b)},
    }


# -- text ------------------------------------------------------------------------------
def test_rows_line(t: dict[str, Any]) -> str:
    """Whether A's and B's test metrics are of the same rows (their content digests)."""
    a, b = t["a"], t["b"]
    if t["same"] is None:
        return "test rows: not known for " + ("A" if not a else "B") + " (no evaluate)"
    if t["same"]:
        return f"test rows: same ({a['rows']} rows, digest {a['digest'][:12]})"
    return (
        f"test rows: DIFFERENT ({a['rows']} vs {b['rows']} rows): the test metrics of A and "
        "B are of different rows, so their deltas mix the models' change with the rows'"
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _raw(value: Any) -> str:
    """A parameter as given (no rounding: 1e-4 must not print as 0.0001 vs 0.0000)."""
    return "-" if value is None else str(value)


def render_text(d: dict[str, Any]) -> str:
    a, b = d["a"], d["b"]
    out = [f"A: {a['dir']} ({a['status']})", f"B: {b['dir']} ({b['status']})", ""]
    params = d["parameters"]
    out.append(f"parameters: {len(params)} differ" if params else "parameters: same")
    out += [f"  {p['key']}: {_raw(p['a'])} -> {_raw(p['b'])}" for p in params]
    out.append("data:")
    out += [
        f"  {r['key']}: {_fmt(r['a'])}" + ("" if r["same"] else f" -> {_fmt(r['b'])}")
        for r in d["data"]
    ]
    out.append("code:")
    out += [
        f"  {r['key']}: {_fmt(r['a'])}" + ("" if r["same"] else f" -> {_fmt(r['b'])}")
        for r in d["code"]
    ]
    pkgs = [p for p in d["packages"] if not p["same"]]
    out.append(f"packages: {len(pkgs)} differ" if pkgs else "packages: same versions")
    out += [f"  {p['key']}: {_fmt(p['a'])} -> {_fmt(p['b'])}" for p in pkgs]
    out.append("stage inputs:")
    for s in d["stages"]:
        what = "same" if s["same"] else "different"
        if not s["compared"]:
            what = "only in A" if s["hash_a"] else "only in B" if s["hash_b"] else "in neither"
        if s["changed"]:
            what += f" ({', '.join(s['changed'])})"
        reused = "".join(
            f"; {side.upper()} reused it from {Path(s[f'reused_from_{side}']['run_dir']).name}"
            for side in ("a", "b")
            if isinstance(s[f"reused_from_{side}"], dict)
            and s[f"reused_from_{side}"].get("run_dir")
        )
        out.append(f"  {s['stage']:<10} {what}; {s['status_a']} / {s['status_b']}{reused}")
    out.append(test_rows_line(d["test_rows"]))
    out.append(f"{'metrics:':<36} {'A':>9} {'B':>9} {'delta':>9}  B vs A")
    for r in d["metrics"]:
        delta = f"{r['delta']:+.4f}" if r["delta"] is not None else "-"
        label = f"{r['model']} {r['split']} {r['metric']}"
        out.append(
            f"  {label:<34} {_fmt(r['a']):>9} {_fmt(r['b']):>9} {delta:>9}  {r['compared'] or '-'}"
        )
    for side in ("a", "b"):
        g = d["gate"][side]
        verdict = {True: "passed", False: "not passed", None: "no verdict"}[g["passed"]]
        if g["same_model_as"]:
            verdict = f"same model as champion v{g['same_model_as']}"
        out.append(
            f"gate {side.upper()}: {verdict}; candidate {_fmt(g['candidate'])}, compared with "
            f"champion {_fmt(g['champion'])}; version {_fmt(g['version'])}"
            + (", promoted" if g["promoted"] else "")
        )
    return "\n".join(out)


# -- HTML ------------------------------------------------------------------------------
def write_html(d: dict[str, Any], target: Path) -> Path:
    """A self-contained page (inline CSS, no scripts) a reviewer can open anywhere."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    env.filters["raw"] = _raw
    page = env.from_string(TEMPLATE.read_text()).render(d=d, title=html.escape(d["b"]["name"]))
    target.write_text(page)
    return target


def default_output(run_a: Path, run_b: Path) -> Path:
    return Path(run_b).resolve() / f"diff-{Path(run_a).resolve().name}.html"


def champion_diff(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """For the index: the diff against the run that made the champion the candidate was
    compared with, written into ``run_dir`` when that folder is readable here; otherwise
    where it is. None when the candidate was compared with no champion."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ev = products.EVALUATE.load(run_dir)
    if ev is None or ev.champion is None:
        return None
    params = manifest.get("parameters") or {}
    name = (params.get("registry") or {}).get("model_name") or (
        f"{manifest.get('experiment')}-classifier"
    )
    version = ev.champion.version
    out: dict[str, Any] = {"version": version, "model_name": name}
    uri = (manifest.get("mlflow") or {}).get("tracking_uri")
    if not uri:
        out["missing"] = "the manifest records no tracking URI to look the version up in"
        return out
    try:
        tags = (
            MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, version).tags
        )
    except MlflowException as exc:
        out["missing"] = f"{name} version {version} not readable in the registry ({exc})"
        return out
    champ_dir = tags.get("mlfolio.run_dir")
    out["run_dir"] = champ_dir
    if not champ_dir:
        out["missing"] = f"{name} version {version} has no mlfolio.run_dir tag"
    elif not (Path(champ_dir) / "manifest.json").is_file():
        out["missing"] = f"its run folder {champ_dir} is not readable here"
    elif Path(champ_dir).resolve() != run_dir.resolve():
        target = default_output(Path(champ_dir), run_dir)
        write_html(diff_runs(champ_dir, run_dir), target)
        out["href"] = target.name
    return out
