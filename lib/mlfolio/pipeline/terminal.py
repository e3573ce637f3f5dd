"""What ``mlfolio run`` and ``mlfolio monitor`` print beyond one line per stage: tuning
progress, the training verdict (gate, version and aliases, champion, deployment) and the
monitor's drift verdict. Pure functions of the run folder's products and manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlfolio import products
from mlfolio.files import read_json
from mlfolio.products import deploy_outcome

LABEL = 12  # "champion:   " — the runner's "run folder: " width


def _line(key: str, text: str) -> str:
    return f"{key + ':':<{LABEL}}{text}"


# -- tune ------------------------------------------------------------------------------
def tune_progress(doc: dict[str, Any]) -> str:
    """``12/30 trials (2 pruned), best CV ROC AUC 0.8466 (trial 7)`` from the progress
    file the tuning workers write (:mod:`mlfolio.progress`)."""
    extra = [f"{doc[k]} {k}" for k in ("pruned", "failed") if doc.get(k)]
    text = f"{doc.get('done', 0)}/{doc.get('total', '?')} trials"
    if extra:
        text += f" ({', '.join(extra)})"
    if doc.get("best") is not None:
        text += f", best CV ROC AUC {doc['best']:.4f} (trial {doc['best_trial']})"
    return text


def tune_summary(run_dir: Path, n_trials: int) -> str:
    """What tune's finished line adds after ``ok in 35.2s``: trials, best CV ROC AUC."""
    doc = products.TUNE.load(run_dir)
    if doc is None:
        return ""
    if not doc.enabled:
        return ": tuning disabled"
    extra = doc.model_extra or {}  # what the tune stage adds to TuneDoc's fields
    states = extra.get("trial_states") or {}
    return ": " + tune_progress(
        {
            "done": states.get("COMPLETE", 0) + states.get("PRUNED", 0),
            "total": n_trials,
            "pruned": states.get("PRUNED", 0),
            "failed": states.get("FAIL", 0),
            "best": extra.get("best_cv_roc_auc"),
            "best_trial": extra.get("best_trial"),
        }
    )


# -- the training verdict --------------------------------------------------------------
def _na(value: float | None, spec: str) -> str:
    """A metric, or "n/a" where it is undefined (None)."""
    return "n/a" if value is None else format(value, spec)


def _strip(reason: str) -> str:
    return reason.removeprefix("PASS ").removeprefix("FAIL ")


def deciding_reason(gate: dict[str, Any]) -> str:
    """Why the gate decided as it did: the failed checks, else the last check passed (the
    comparison with the champion, or that there was none)."""
    reasons = gate.get("reasons") or []
    failed = [_strip(r) for r in reasons if r.startswith("FAIL ")]
    if failed:
        return "; ".join(failed)
    return _strip(reasons[-1]) if reasons else ""


def _aliases(version: str, register: dict[str, Any]) -> list[str]:
    """The aliases ``version`` holds after register: its alias moves, and champion when
    it already was champion (an identical model re-registered nothing)."""
    held = {e["alias"] for e in register.get("alias_events", []) if e.get("version") == version}
    if register.get("champion") == version:
        held.add("champion")
    return sorted(held)


def run_verdict(
    manifest: dict[str, Any], run_dir: Path, aliases: list[str] | None = None
) -> list[str]:
    """The lines that end a training run: the gate's verdict and deciding reason, the
    version registered and the aliases it holds (``aliases``, read from the registry by
    the caller; else the moves register made), the champion now, what each deploy target
    did.
    Empty when evaluate did not run."""
    gate = manifest.get("gate")
    if not gate:
        return []
    failed = any(r.startswith("FAIL ") for r in gate.get("reasons") or [])
    if gate.get("same_model_as") and not failed:
        same = next(r for r in gate["reasons"] if r.startswith("SAME "))
        lines = [_line("gate", "same " + same.removeprefix("SAME "))]
    else:
        lines = [
            _line(
                "gate",
                # a failed check states what it needed ("...: needs its lower bound above +0.0")
                f"{'passed' if gate['passed'] else 'NOT passed'}: {deciding_reason(gate)}",
            )
        ]
    stages = manifest.get("stages") or {}
    if (stages.get("register") or {}).get("status") == "skipped":
        return lines + _held_back(manifest, run_dir)
    model = manifest.get("model")
    reg_path = run_dir / products.REGISTER.path
    if not model or not reg_path.exists():
        return lines
    register = read_json(reg_path)
    name, version = model["model_name"], model.get("version")
    if version is None:  # an interactive run registers nothing
        lines.append(_line("model", f"not registered: {model.get('why_not_promoted')}"))
    else:
        how = (
            f"identical to version {model['duplicate_of']}, nothing new registered"
            if model.get("duplicate_of")
            else "registered"
        )
        held = sorted(
            aliases if aliases is not None else _aliases(version, register),
            key=lambda a: (a != "champion", a),
        )
        holds = ", ".join(f"@{a}" for a in held) if held else "no alias"
        text = f"{name} version {version} ({how}), holds {holds}"
        if not model.get("promoted") and model.get("why_not_promoted"):
            text += f"; not promoted: {model['why_not_promoted']}"
        lines.append(_line("model", text))
    champion, before = model.get("champion"), model.get("compared_against")
    if champion is None:
        now = f"none: {name} has no @champion"
    elif model.get("promoted") and champion != before:
        now = f"version {champion}" + (f" (was version {before})" if before else " (the first)")
    else:
        now = f"version {champion}" + (" (unchanged)" if champion == before else "")
    lines.append(_line("champion", now))
    deploy = manifest.get("deploy")
    if deploy and manifest.get("stages", {}).get("deploy", {}).get("status") == "succeeded":
        lines.append(_line("deployed", deploy_summary(deploy)))
    return lines


def _held_back(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    """The model, champion and deployed lines when the gate held register and deploy back
    (``--engine kfp-local``: they run inside ``dsl.If``): nothing registered, the champion
    evaluate compared with unchanged, nothing deployed."""
    stages = manifest["stages"]
    candidate = (manifest.get("candidate") or {}).get("name", "the candidate")
    why = stages["register"].get("reason") or "the gate did not pass"
    ev_path = run_dir / products.EVALUATE.path
    compared = (read_json(ev_path).get("champion") or {}) if ev_path.exists() else {}
    champion = compared.get("version")
    deploy = stages.get("deploy") or {}
    return [
        _line("model", f"{candidate} not registered: register skipped ({why})"),
        _line("champion", f"version {champion} (unchanged)" if champion else "none"),
        _line(
            "deployed",
            f"nothing: deploy {deploy.get('status', 'not run')} ({deploy.get('reason') or why})",
        ),
    ]


def deploy_summary(deploy: dict[str, Any]) -> str:
    """``version 1 (@champion): local checked, then stopped; kubernetes manifests written
    (not applied)`` — what each target really did, never "deployed" for a stopped server."""
    if deploy.get("why_not_deployed"):
        return f"nothing: {deploy['why_not_deployed']}"
    targets = deploy.get("targets") or {}
    done = "; ".join(f"{t} {deploy_outcome(t, d)}" for t, d in targets.items()) or "no target"
    return f"version {deploy['version']} (@{deploy['alias']}): {done}"


# -- the monitor's drift verdict -------------------------------------------------------
QUALITY = (("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"), ("f1", "F1"), ("recall", "recall"))


def drift_verdict(drift: dict[str, Any], max_columns: int = 8) -> list[str]:
    """The monitor's verdict from its ``drift.json``: share of drifted columns and which,
    dataset drift, prediction drift, quality on labelled rows against the reference."""
    n, total = drift["n_drifted"], drift["n_columns"]
    cols = drift["drifted_columns"]
    shown = ", ".join(cols[:max_columns]) + (
        f", ... ({len(cols) - max_columns} more)" if len(cols) > max_columns else ""
    )
    lines = [
        _line(
            "drift",
            f"{n}/{total} columns drifted ({drift['share_drifted']:.0%})"
            + (f": {shown}" if cols else ""),
        ),
        _line(
            "dataset",
            ("DRIFT" if drift["dataset_drift"] else "no drift")
            + f" (threshold: {drift['drift_share']:.0%} of columns)",
        ),
    ]
    pred = drift.get("prediction_drift") or {}
    if pred:
        means = (
            f", mean score {pred['reference_mean']:.3f} -> {pred['current_mean']:.3f}"
            if "reference_mean" in pred
            else ""
        )
        lines.append(
            _line(
                "prediction",
                ("DRIFT" if pred.get("drifted") else "no drift")
                + f" ({pred.get('method')} {pred.get('score', float('nan')):.4g}{means})",
            )
        )
    quality = drift.get("quality")
    if quality:
        parts = [
            f"{label} {_na(quality['reference'][k], '.3f')} -> "
            f"{_na(quality['current'][k], '.3f')} ({_na(quality['delta'][k], '+.3f')})"
            for k, label in QUALITY
            if k in quality.get("delta", {})
        ]
        lines.append(
            _line("quality", f"on {quality['labelled_rows']} labelled rows: " + ", ".join(parts))
        )
    else:
        lines.append(_line("quality", "no labelled rows (give --labels FILE): not measured"))
    lines += estimate_lines(drift.get("performance_estimate"))
    return lines


def estimate_lines(est: dict[str, Any] | None) -> list[str]:
    """The label-free estimate (CBPE) and, once labels came, how far off it was."""
    if not est:
        return []
    ci = est.get("roc_auc_ci") or [None, None]
    delta = est.get("roc_auc_delta")
    text = (
        f"ROC AUC {_na(est.get('roc_auc'), '.3f')} [{_na(ci[0], '.3f')}, {_na(ci[1], '.3f')}]"
        + (f" ({delta:+.3f} vs reference)" if delta is not None else "")
        + f", PR AUC {_na(est.get('pr_auc'), '.3f')}, F1 {_na(est.get('f1'), '.3f')}, "
        f"accuracy {_na(est.get('accuracy'), '.3f')} on {est.get('rows')} rows without labels"
    )
    lines = [_line("estimate", text)]
    side = est.get("realised")
    if side:
        flag = (
            f"; CONCEPT SHIFT? realised {', '.join(side['outside_interval'])} outside the interval"
            if side.get("concept_shift_suspected")
            else "; within the interval"
        )
        lines.append(
            _line(
                "realised",
                f"ROC AUC estimated {_na(side['estimated'].get('roc_auc'), '.3f')}, realised "
                f"{_na(side['realised'].get('roc_auc'), '.3f')} on {side['rows']} labelled rows"
                + flag,
            )
        )
    return lines


def ab_line(ab: dict[str, Any]) -> str:
    """The A/B report's recommendation in one line."""
    rec = ab.get("recommendation", {})
    text = f"{rec.get('action', 'keep')}"
    if rec.get("summary"):
        text += f": {rec['summary']}"
    return _line("A/B", text)
