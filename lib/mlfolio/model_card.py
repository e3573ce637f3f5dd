"""The model card: one Markdown page a reviewer can sign off on (a pure renderer).

Everything comes from the run's products (evaluate.json, ingest.json) and, once register
ran, the version; the stage edge (:mod:`mlfolio.stages.explaining`) gathers the facts and
writes ``model_card.md``. :func:`top_features` and :func:`top_categorical` rank an explain
summary (evaluate.json's ``explain``) for the card, the index page and the segment choice:
plain dicts, so reading a run's ranking never imports scikit-learn.
"""

from __future__ import annotations

from typing import Any

METRICS = ("roc_auc", "pr_auc", "precision", "recall", "f1", "accuracy")


def ranking(summary: dict[str, Any] | None) -> tuple[dict[str, float], str]:
    """(column → importance, largest first; what it is): the mean |attribution| when the
    model has one ("mean_abs"), else the permutation importance ("permutation")."""
    if summary and summary.get("mean_abs"):
        by, values = "mean_abs", summary["mean_abs"]
    else:
        perm = (summary or {}).get("permutation") or {}
        by, values = "permutation", {k: v["mean"] for k, v in perm.items()}
    return dict(sorted(values.items(), key=lambda kv: -kv[1])), by


def top_features(summary: dict[str, Any] | None, n: int = 5) -> list[str]:
    """The ``n`` raw columns a model relies on most (see :func:`ranking`)."""
    return list(ranking(summary)[0])[:n]


def top_categorical(summary: dict[str, Any] | None, categorical: list[str], n: int) -> list[str]:
    """The ``n`` categorical columns a model relies on most (the schema's first ``n``
    when there is no ranking): where an error analysis by segment looks."""
    ranked = [c for c in top_features(summary, 10**6) if c in categorical]
    return (ranked or list(categorical))[:n]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _metric_table(ev: dict[str, Any]) -> list[str]:
    intervals = ev.get("intervals") or {}
    champion = ev.get("champion") or {}
    head = "| metric (test rows) | candidate | interval |"
    rule = "|---|---:|---|"
    if champion:
        head += f" champion v{champion['version']} |"
        rule += "---:|"
    lines = [head, rule]
    level = intervals.get("confidence")
    for name in METRICS:
        if name not in ev["candidate"]["test"]:
            continue
        value = ev["candidate"]["test"][name]  # None: undefined (e.g. no predicted positive)
        iv = (intervals.get("metrics") or {}).get(name)
        span = f"{iv['low']:.4f} … {iv['high']:.4f}" if iv and iv["low"] is not None else "n/a"
        row = f"| {name} | {'n/a' if value is None else f'{value:.4f}'} | {span} |"
        if champion:
            other = champion["test"].get(name)
            row += f" {other:.4f} |" if other is not None else " n/a |"
        lines.append(row)
    if intervals:
        rows, test_rows = intervals.get("rows"), intervals.get("test_rows")
        of = (
            f"a stratified sample of {rows:,} of the {test_rows:,} test rows, its spread "
            "rescaled by sqrt(sample / rows) around the value on all of them"
            if rows and test_rows and rows < test_rows
            else "the test rows"
        )
        lines.append(
            f"\nIntervals: {level:.0%} percentile bootstrap over {intervals['samples']} "
            f"resamples of {of}."
        )
    return lines


def _threshold(ev: dict[str, Any], rule: str) -> list[str]:
    lines = [f"Decision threshold **{ev['threshold']:.4f}** ({rule}): a score at or above it"]
    lines[0] += " flags the row as positive."
    champion = ev.get("champion")
    if champion and champion.get("threshold") is not None:
        lines.append(
            f"The champion v{champion['version']} is scored at its own threshold "
            f"{champion['threshold']:.4f} ({champion.get('threshold_source', 'recorded')})."
        )
    return lines


def _features(ev: dict[str, Any], n: int = 8) -> list[str]:
    summary = (ev.get("explain") or {}).get("candidate")
    if not summary:
        return ["No explanation was computed."]
    method = {
        "tree_shap": "SHAP values (XGBoost TreeSHAP)",
        "linear": "exact linear attribution coef × (x − mean)",
    }.get(summary.get("method") or "", "permutation importance only")
    lines = [
        f"What the candidate relies on most ({method}, {summary['rows']} test rows; "
        "permutation importance = drop in ROC AUC when the column is shuffled):",
        "",
        "| column | mean abs attribution (log-odds) | permutation importance |",
        "|---|---:|---:|",
    ]
    for col in top_features(summary, n):
        attribution = (summary.get("mean_abs") or {}).get(col)
        perm = summary["permutation"][col]
        lines.append(
            f"| {col} | {'n/a' if attribution is None else f'{attribution:.4f}'} | "
            f"{perm['mean']:+.4f} ± {perm['std']:.4f} |"
        )
    if summary.get("note"):
        lines += ["", summary["note"]]
    return lines


def segment_interval(row: dict[str, Any]) -> str:
    """The segment's candidate − champion ROC AUC with its paired bootstrap interval, or
    n/a (not judged, or no champion)."""
    d = row.get("difference")
    if not d:
        return "n/a"
    return f"{d['difference']:+.3f} ({d['ci_low']:+.3f} .. {d['ci_high']:+.3f})"


def segment_verdict(row: dict[str, Any]) -> str:
    """candidate worse / no clear difference / not judged: why."""
    if row.get("flagged"):
        return "candidate worse"
    if row.get("judged"):
        return "no clear difference"
    return f"not judged: {row.get('why_not_judged') or 'no interval recorded'}"


def _segments(ev: dict[str, Any]) -> list[str]:
    seg = ev.get("segments")
    if not seg or not seg.get("rows"):
        return ["No segment had enough test rows to be analysed."]
    has_champion = any(r.get("champion") for r in seg["rows"])
    lines = [
        f"Columns {', '.join(seg['columns'])} ({seg['chosen_by']}); segments with at least "
        f"{seg['min_rows']} test rows; each model at its own threshold."
        + (f" Worse only where {seg['flag_rule']}." if has_champion and "flag_rule" in seg else ""),
        "",
        "| segment | rows | positive rate | ROC AUC | recall | precision |"
        + (" champion ROC AUC | difference (CI) | verdict |" if has_champion else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|---|" if has_champion else ""),
    ]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for r in seg["rows"]:
        c = r["candidate"]
        line = (
            f"| {r['column']} = {r['value']} | {r['rows']} | {_pct(r['positive_rate'])} | "
            f"{fmt(c['roc_auc'])} | {fmt(c['recall'])} | {fmt(c['precision'])} |"
        )
        if has_champion:
            champ = r.get("champion") or {}
            verdict = "**worse**" if r["flagged"] else segment_verdict(r)
            line += f" {fmt(champ.get('roc_auc'))} | {segment_interval(r)} | {verdict} |"
        lines.append(line)
    return lines


def _limitations(ev: dict[str, Any], data: dict[str, Any], rule: str) -> list[str]:
    items = [
        f"Trained and evaluated on {data['rows']:,} rows of `{data['source']}` (positive "
        f"rate {_pct(data['positive_rate'])}); customers unlike these rows are outside "
        "what was tested.",
        "Attributions describe what the model uses, not what causes the outcome; "
        "correlated columns share the credit between them.",
    ]
    if "max_f1" in rule:
        items.append(
            "The threshold maximises F1 on the validation rows: when a missed positive "
            "and a false alarm cost differently, choose another (`evaluation.threshold`)."
        )
    summary = (ev.get("explain") or {}).get("candidate") or {}
    if summary.get("note"):
        items.append(summary["note"] + ".")
    flagged = [
        f"{r['column']} = {r['value']}"
        for r in (ev.get("segments") or {}).get("rows", [])
        if r.get("flagged")
    ]
    if flagged:
        items.append(
            "The candidate ranks worse than the champion (the interval of the ROC AUC "
            "difference below 0) in segment(s): " + ", ".join(flagged)
        )
    champion = ev.get("champion") or {}
    if champion and str(champion.get("threshold_source", "")).startswith("unknown"):
        items.append(f"Champion threshold {champion['threshold_source']}.")
    return [f"- {i}" for i in items]


def _inputs(inputs: dict[str, Any] | None) -> list[str]:
    """The columns the model reads and their declared types (MLflow's signature types them
    ``Any`` so its clients take raw rows; the MLmodel metadata ``mlfolio`` declares them)."""
    if not inputs:
        return []
    lines = [
        "",
        "## Input",
        "",
        "- Numeric (read as numbers; blank text is missing): "
        + ", ".join(f"`{c}`" for c in inputs.get("numeric") or []),
        "- Categorical (read as text; an integer flag as its text): "
        + ", ".join(f"`{c}`" for c in inputs.get("categorical") or []),
    ]
    if inputs.get("id_column"):
        lines.append(f"- Id column `{inputs['id_column']}`: accepted, never scored")
    lines.append(
        "- The MLflow signature names these columns with type `Any`: `mlflow.pyfunc`, "
        "`mlflow models predict` and `mlflow models serve` take rows as `pandas.read_csv` "
        "reads the source or typed as declared (the types above are the MLmodel's "
        "`mlfolio` metadata)"
    )
    return lines


def render(ev: dict[str, Any], facts: dict[str, Any]) -> str:
    """The card as Markdown, from the evaluate result ``ev`` and ``facts``: experiment,
    description, model_name, target, positive_label, threshold_rule, inputs (numeric,
    categorical, id_column: optional), data (ingest.json plus snapshot_at), lineage
    (run_dir, pipeline_run_url, model_run_url, model_uri) and version (None until
    register: name, version, uri, promoted, champion, card_uri)."""
    data, lineage, version = facts["data"], facts["lineage"], facts.get("version")
    cand = ev["candidate"]
    rule = facts["threshold_rule"]
    title = (
        f"{version['name']} version {version['version']}"
        if version
        else f"{facts['model_name']} candidate (not registered yet)"
    )
    gate = ev["gate"]
    lines = [
        f"# Model card: {title}",
        "",
        "## Intended use",
        "",
        f"{facts.get('description') or facts['experiment']}",
        "",
        f"The model scores each row's probability that `{facts['target']}` is "
        f"`{facts['positive_label']}`, from the raw columns of the training data. It "
        "supports a decision made by people (who to contact first), not an automatic "
        "action on a single score.",
        "",
        "## Model",
        "",
        f"- Candidate `{cand['name']}` ({cand.get('kind', 'model')}), chosen on validation "
        "ROC AUC among the trained and tuned models",
        f"- Parameters: `{cand.get('params', {})}`",
        "- Gate: **"
        + (
            f"same model as champion v{gate['same_model_as']}"
            if gate.get("same_model_as")
            else "passed"
            if gate["passed"]
            else "not passed"
        )
        + "**",
        *[f"  - {r}" for r in gate["reasons"]],
    ]
    if version:
        lines.append(
            f"- Registered as **{version['name']} v{version['version']}**; "
            + (
                "promoted to `champion`"
                if version.get("promoted")
                else "**pending approval** (`pending-approval`; champion stays "
                f"{_v(version.get('champion'))} until someone approves it)"
                if version.get("approval")
                else f"not promoted (champion: {version.get('champion') or 'none'})"
            )
        )
    else:
        lines.append("- Not registered yet: the register stage completes this card.")
    lines += [
        "",
        "## Data",
        "",
        f"- Source: `{data['source']}`",
        f"- Content hash: `{data['data_hash']}`",
        f"- Rows: {data['rows']:,} (read {data.get('source_rows', data['rows']):,}; "
        f"{data.get('dropped_missing_target', 0):,} dropped without a target); positive "
        f"rate {_pct(data['positive_rate'])}",
        f"- Snapshot taken: {data.get('snapshot_at', 'unknown')}; evaluated: "
        f"{facts.get('evaluated_at', 'unknown')}",
    ]
    splits = data.get("splits") or {}
    if splits:
        lines.append(
            "- Splits (stratified, seeded): "
            + ", ".join(f"{k} {int(v['rows']):,}" for k, v in splits.items())
        )
    lines += _inputs(facts.get("inputs"))
    lines += ["", "## Metrics", "", *_metric_table(ev), "", "## Threshold", ""]
    lines += _threshold(ev, rule)
    lines += ["", "## What the model relies on", "", *_features(ev)]
    lines += ["", "## Segments", "", *_segments(ev)]
    lines += ["", "## Limitations", "", *_limitations(ev, data, rule)]
    if version and version.get("approval"):
        lines += ["", *approval_section(version["approval"])]
    lines += [
        "",
        "## Lineage",
        "",
        f"- Run folder: `{lineage['run_dir']}` ([index](index.html), "
        "[evaluate report](05_evaluate.html))",
        f"- MLflow pipeline run: {lineage.get('pipeline_run_url') or 'none'}",
        f"- MLflow run of the model: {lineage.get('model_run_url') or cand['run_id']}",
        f"- Logged model: `{cand['model_uri']}`",
    ]
    if version:
        lines.append(f"- Registered model: `{version['uri']}`")
        if version.get("card_uri"):
            lines.append(f"- This card in MLflow: `{version['card_uri']}`")
    return "\n".join(lines) + "\n"


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


APPROVAL_HEADING = "## Approval"


def approval_section(a: dict[str, Any]) -> list[str]:
    """The card's Approval section: pending (who asked, when, the approve command) or the
    decision (``action`` approve/reject, ``by``, ``at``, ``note``, ``compared_against``)."""
    lines = [APPROVAL_HEADING, ""]
    if a.get("action") in ("approve", "reject"):
        word = "Approved" if a["action"] == "approve" else "Rejected"
        note = f": {a['note']}" if a.get("note") else " (no note)"
        lines.append(f"- **{word}** by {a.get('by')} at {a.get('at')}{note}")
        if a["action"] == "approve":
            lines.append(
                f"- `champion` moved from {_v(a.get('compared_against'))} (the version the "
                f"gate compared against) to v{a.get('version')}"
            )
        else:
            lines.append(f"- Not promoted; champion stays {_v(a.get('champion'))}")
    else:
        lines.append(
            f"- **Pending approval** since {a.get('requested_at') or a.get('at')}: the gate "
            f"passed against champion {_v(a.get('compared_against'))}; "
            "`registry.require_approval` keeps it from `champion` until someone runs "
            f"`{a.get('command')}` (or `mlfolio reject`)"
        )
    return lines


def with_approval(card: str, decision: dict[str, Any]) -> str:
    """``card`` (Markdown) with its Approval section replaced by ``decision``'s (added
    before Lineage when it has none)."""
    section = "\n".join(approval_section(decision)) + "\n"
    start = card.find(f"\n{APPROVAL_HEADING}\n")
    if start >= 0:
        end = card.find("\n## ", start + 1)
        return card[: start + 1] + section + (card[end:] if end >= 0 else "")
    at = card.find("\n## Lineage\n")
    if at < 0:
        return card.rstrip("\n") + "\n\n" + section
    return card[: at + 1] + section + card[at:]
