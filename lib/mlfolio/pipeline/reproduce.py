"""``mlfolio reproduce RUN_DIR``: re-execute a finished training run from its record and
say whether the same data, code and parameters gave the same results.

The reproduction runs the stages up to evaluate into a new run folder, with no stage
reused and the candidate compared with the champion version the original compared with
(``evaluation.champion_version``). Register and deploy are left out on purpose: they
write to the registry and the serving targets, and a reproduction must not add a model
version or move an alias; their verdict is evaluate's gate, which is compared.

What is compared (``reproduce.json`` in the new folder keeps every line):

- the data content hash, exactly; it is checked before anything runs (``DataChangedError``);
- every number of the stage products (ingest, preprocess, train, tune, evaluate): row
  counts, hyperparameters, metrics, the threshold, the bootstrap comparison; the content
  hash of each data split; the candidate chosen; the gate verdict and its reasons;
- the candidate model's scores on the test rows (both models loaded, max abs difference).

All of it is exact when the run is bit-stable. Tuning is not when trials ran in parallel
(``tuning.n_workers`` > 1, or a shared ``tuning.storage``: the order in which workers
report trials steers the sampler) or when ``tuning.timeout`` ended the study (how many
trials fit depends on the machine's speed). Then the tune and evaluate numbers may differ
by ``tolerance`` (absolute), the candidate's scores by ``tolerance`` on average, and the
gate's reasons (which print the numbers) are not compared, only its verdict.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfolio import products
from mlfolio.config import Config
from mlfolio.errors import ConfigError, DataChangedError
from mlfolio.files import read_json, write_json
from mlfolio.graph import STAGES
from mlfolio.pipeline.manifest import Manifest
from mlfolio.pipeline.provenance import git_info, package_versions

log = logging.getLogger(__name__)

TOLERANCE = 0.01
# Products whose numbers are compared, and which of them depend on tuning.
COMPARED = (products.INGEST, products.PREPROCESS, products.TRAIN, products.TUNE, products.EVALUATE)
TUNING_DEPENDENT = {products.TUNE.path, products.EVALUATE.path}


@dataclass
class Reproduction:
    """The outcome: ``differences`` empty means reproduced."""

    original: Path
    run_dir: Path
    stable: bool
    why_unstable: list[str]
    tolerance: float
    checks: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_in_record: list[str] = field(default_factory=list)  # numbers only the new run has

    @property
    def differences(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["same"]]

    @property
    def reproduced(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        return {
            "reproduces": str(self.original),
            "run_dir": str(self.run_dir),
            "reproduced": self.reproduced,
            "bit_stable": self.stable,
            "why_not_bit_stable": self.why_unstable,
            "tolerance": None if self.stable else self.tolerance,
            "warnings": self.warnings,
            "differences": self.differences,
            "checks": self.checks,
            "not_in_record": self.not_in_record,
        }


# -- before anything runs --------------------------------------------------------------
def source_hash(cfg: Config) -> str:
    """The data hash ingest would record now: the source read, checked and sampled as
    the ingest stage does (without writing anything)."""
    from mlfolio import data

    raw = data.load_source(cfg.data)
    checked = data.check(raw, cfg.schema, source=cfg.data.uri)
    return data.content_hash(data.sample(checked.frame, cfg.data.sample_rows, cfg.seed))


def _record(original: Path) -> tuple[Manifest, dict[str, Any]]:
    """The original's manifest and evaluate product; refuses what cannot be reproduced."""
    manifest = Manifest.load(original)
    m = manifest.data
    if m.get("kind", "training") != "training":
        raise ConfigError(f"{original}: a {m.get('kind')} run; only training runs reproduce")
    stages = m.get("stages", {})
    missing = [s.name for s in _stages() if stages.get(s.name, {}).get("status") != "succeeded"]
    if missing:
        raise ConfigError(
            f"{original}: stage(s) {', '.join(missing)} did not succeed in this run; "
            "only a run whose stages up to evaluate succeeded can be reproduced"
        )
    if not m.get("data_hash"):
        raise ConfigError(f"{original}/manifest.json: no data_hash recorded")
    if not (original / "parameters.yaml").is_file():
        raise ConfigError(f"{original}: no parameters.yaml; is this a run folder?")
    return manifest, read_json(original / products.EVALUATE.path)


def _stages() -> list:
    """The leading stages whose effect stays in the run folder (``reusable``): a
    reproduction stops before the first that writes to the registry or a target."""
    return list(itertools.takewhile(lambda s: s.reusable, STAGES))


def _overrides(original: Path, m: dict[str, Any], evaluate_doc: dict[str, Any]) -> dict[str, Any]:
    champion = evaluate_doc.get("champion")
    out: dict[str, Any] = {
        "evaluation.champion_version": int(champion["version"]) if champion else "none"
    }
    # The study's first trial: the champion version the original warm-started from, the
    # train stage's model, or none (off, or a run from before warm starts were recorded).
    tuned = products.TUNE.load(original)
    if tuned is not None and tuned.enabled:
        started = (tuned.model_extra or {}).get("warm_start") or {}
        if "params" not in started:
            out["tuning.warm_start"] = False
        else:
            out["tuning.warm_start"] = (
                int(started["version"]) if "version" in started else "baseline"
            )
    # The original's store holds the champion it compared with: use it, whatever
    # $MLFLOW_TRACKING_URI says now.
    recorded = (m.get("mlflow") or {}).get("tracking_uri")
    if recorded and not (m.get("parameters") or {}).get("tracking", {}).get("tracking_uri"):
        out["tracking.tracking_uri"] = recorded
    return out


def _drift_warnings(m: dict[str, Any]) -> list[str]:
    warnings = []
    then, now = m.get("git") or {}, git_info()
    if then.get("commit") != now.get("commit"):
        warnings.append(
            f"code commit differs: recorded {then.get('commit')}, now {now.get('commit')}"
        )
    elif now.get("dirty") and not then.get("dirty"):
        warnings.append(f"code differs: uncommitted changes on commit {now.get('commit')}")
    # Only what the record has: a package recorded since (e.g. python) is no difference.
    recorded, current = m.get("packages") or {}, package_versions()
    changed = [
        f"{name} {version} -> {current.get(name, 'not recorded now')}"
        for name, version in sorted(recorded.items())
        if current.get(name) != version
    ]
    if changed:
        warnings.append("package versions differ: " + ", ".join(changed))
    return warnings


def _unstable(cfg: Config, original: Path) -> list[str]:
    """Why tuning is not bit-stable for this run (empty: it is)."""
    tuning = cfg.tuning
    if not tuning.enabled:
        return []
    why = []
    if tuning.n_workers > 1:
        why.append(f"tuning.n_workers is {tuning.n_workers}: trials finish in varying order")
    if tuning.storage:
        why.append("tuning.storage is shared: workers elsewhere may add trials")
    doc = products.TUNE.load(original)
    ran = sum((doc.model_extra or {}).get("trial_states", {}).values()) if doc else 0
    if tuning.timeout is not None and ran < tuning.n_trials:
        why.append(
            f"tuning.timeout ({tuning.timeout:g} s) ended the study after {ran} of "
            f"{tuning.n_trials} trials: how many fit depends on the machine"
        )
    return why


# -- the comparison --------------------------------------------------------------------
def _numbers(value: Any, prefix: str) -> dict[str, float]:
    """Every number in a JSON document, by dotted path (booleans are not numbers)."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(_numbers(item, f"{prefix}.{key}"))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(_numbers(item, f"{prefix}[{i}]"))
        return out
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def _check(what: str, original: Any, now: Any, same: bool, **extra: Any) -> dict[str, Any]:
    return {"what": what, "original": original, "reproduction": now, "same": same, **extra}


def _close(a: float | None, b: float | None, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b if tol == 0 else abs(a - b) <= tol


# Numbers that describe the machine a run ran on, not what it computed: never compared
# (the memory budget is the memory available when preprocess ran, unless configured).
MACHINE_DEPENDENT = frozenset({"preprocess.json.encoding.memory.budget_mb"})


def _compare_products(rep: Reproduction) -> None:
    for product in COMPARED:
        tol = 0.0 if rep.stable or product.path not in TUNING_DEPENDENT else rep.tolerance
        before = _numbers(read_json(rep.original / product.path), product.path)
        after = _numbers(read_json(rep.run_dir / product.path), product.path)
        # What the record has is compared; a number only newer code writes is noted.
        for key in sorted(set(before) - MACHINE_DEPENDENT):
            a, b = before[key], after.get(key)
            rep.checks.append(
                _check(key, a, b, _close(a, b, tol), **({"tolerance": tol} if tol else {}))
            )
        rep.not_in_record += sorted(set(after) - set(before) - MACHINE_DEPENDENT)


def _compare_data(rep: Reproduction, m_before: dict, m_after: dict) -> None:
    import pandas as pd

    from mlfolio import data

    a, b = m_before.get("data_hash"), m_after.get("data_hash")
    rep.checks.append(_check("data_hash", a, b, a == b))
    for product in (products.SNAPSHOT, *products.SPLITS.values()):
        hashes = [
            data.content_hash(pd.read_parquet(folder / product.path))
            if (folder / product.path).is_file()
            else None
            for folder in (rep.original, rep.run_dir)
        ]
        rep.checks.append(_check(f"{product.path} content hash", *hashes, hashes[0] == hashes[1]))


def _compare_verdict(rep: Reproduction, before: dict, after: dict) -> None:
    for key in ("name",):
        a, b = before["candidate"][key], after["candidate"][key]
        rep.checks.append(_check(f"candidate.{key}", a, b, a == b))
    versions = [(doc.get("champion") or {}).get("version") for doc in (before, after)]
    rep.checks.append(_check("champion compared with", *versions, versions[0] == versions[1]))
    a, b = before["gate"]["passed"], after["gate"]["passed"]
    rep.checks.append(_check("gate.passed", a, b, a == b))
    if rep.stable:  # the reasons print the metrics: only equal when those are
        a, b = before["gate"]["reasons"], after["gate"]["reasons"]
        rep.checks.append(_check("gate.reasons", a, b, a == b))


def _compare_scores(rep: Reproduction, cfg: Config, before: dict, after: dict) -> None:
    """Both candidate models score the reproduction's test rows."""
    import numpy as np
    import pandas as pd

    from mlfolio import tracking, train

    test = pd.read_parquet(rep.run_dir / products.SPLITS["test"].path)
    scores = [
        train.predict_scores(tracking.load_model(doc["candidate"]["model_uri"]), test, cfg.schema)
        for doc in (before, after)
    ]
    diff = np.abs(scores[0] - scores[1])
    worst, mean = float(diff.max()), float(diff.mean())
    same = worst == 0.0 if rep.stable else mean <= rep.tolerance
    rep.checks.append(
        _check(
            "candidate scores on data/test.parquet",
            before["candidate"]["model_uri"],
            after["candidate"]["model_uri"],
            same,
            rows=len(test),
            max_abs_difference=worst,
            mean_abs_difference=mean,
        )
    )


# -- the command -----------------------------------------------------------------------
def reproduce(
    run_dir: str | Path,
    runs_root: Path | None = None,
    tolerance: float = TOLERANCE,
    echo: Callable[[str], None] = print,
) -> Reproduction:
    """Re-execute ``run_dir``'s stages up to evaluate into a new run folder and compare.

    Raises ConfigError (nothing run) when the folder is not a reproducible run, and
    DataChangedError when the data source's content hash is not the recorded one.
    """
    import mlflow

    from mlfolio import config as config_mod
    from mlfolio.pipeline import report
    from mlfolio.pipeline.runner import run

    original = Path(run_dir).resolve()
    manifest, before = _record(original)
    m = manifest.data
    overrides = _overrides(original, m, before)
    cfg = config_mod.load(original / "parameters.yaml", overrides)
    now = source_hash(cfg)
    if now != m["data_hash"]:
        raise DataChangedError(
            f"data.uri {cfg.data.uri}: content hash is {now}, the run recorded "
            f"{m['data_hash']}; the data the run used is gone, nothing was run"
        )
    pinned = cfg.evaluation.champion_version
    mlflow.set_tracking_uri(cfg.tracking_uri())  # the registry and the models are there
    mlflow.set_registry_uri(cfg.tracking_uri())
    if pinned != "none":
        from mlfolio import registry

        if registry.get_version(cfg.model_name, pinned) is None:
            raise ConfigError(
                f"{original}: the run compared with {cfg.model_name} version {pinned}, "
                f"which is not in the registry at {cfg.tracking_uri()}"
            )
    warnings = _drift_warnings(m)
    for line in warnings:
        echo(f"warning: {line}")
    why = _unstable(cfg, original)
    new = run(
        original / "parameters.yaml",
        overrides=overrides,
        stages=[s.name for s in _stages()],
        runs_root=runs_root or original.parent,
        echo=echo,
        reuse=False,
    )
    rep = Reproduction(original, Path(new.data["run_dir"]), not why, why, tolerance)
    rep.warnings = warnings
    after = read_json(rep.run_dir / products.EVALUATE.path)
    _compare_data(rep, m, new.data)
    _compare_products(rep)
    _compare_verdict(rep, before, after)
    _compare_scores(rep, cfg, before, after)
    write_json(rep.run_dir / "reproduce.json", rep.to_dict())
    new.set(
        reproduces=str(original),
        reproduction={
            "reproduced": rep.reproduced,
            "differences": [d["what"] for d in rep.differences],
            "warnings": warnings,
            "details": "reproduce.json",
        },
    )
    new.save()
    report.write_index(rep.run_dir, new.data)
    return rep


def summary(rep: Reproduction) -> str:
    """What the terminal shows: ``reproduced``, or one line per difference."""
    mode = (
        "exact"
        if rep.stable
        else f"tune/evaluate within {rep.tolerance:g} ({'; '.join(rep.why_unstable)})"
    )
    head = f"{len(rep.checks)} checks ({mode}); details in {rep.run_dir / 'reproduce.json'}"
    if rep.reproduced:
        return f"{head}\nreproduced"
    lines = [head, f"NOT reproduced: {len(rep.differences)} difference(s)"]
    for d in rep.differences:
        extra = "".join(
            f", {k} {d[k]:.3g}" for k in ("max_abs_difference", "mean_abs_difference") if k in d
        )
        lines.append(f"  {d['what']}: original {d['original']!r}, now {d['reproduction']!r}{extra}")
    return "\n".join(lines)
