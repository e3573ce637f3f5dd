"""The default data resampled to any number of rows, for the benchmarks.

Rows are drawn with replacement within each churn class (the class balance stays that
of ``data/telco_churn.csv``), and each drawn row gets a new customer id and a small
seeded jitter on its numeric columns (tenure by up to one month, charges by about 2%),
so that a large sample is not thousands of exact copies (which would let a deep model
memorise validation rows it saw in training). Categorical columns keep their values;
blank ``totalcharges`` text stays blank, as in the source.

    from resample import resample
    frame = resample(40_000, seed=0)                 # a DataFrame
    path = write(400_000, seed=0, folder=Path(...))  # a Parquet file (cached by size, seed)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "telco_churn.csv"


def resample(rows: int, seed: int, source: Path = SOURCE) -> pd.DataFrame:
    """``rows`` rows distributed as ``source``'s (stratified on churn, seeded)."""
    base = pd.read_csv(source)
    rng = np.random.default_rng(seed)
    share = base["churn"].value_counts(normalize=True)
    counts = (share * rows).round().astype(int)
    counts.iloc[0] += rows - counts.sum()  # rounding: the total is exactly ``rows``
    picks = [
        rng.choice(np.flatnonzero(base["churn"].to_numpy() == label), size=n, replace=True)
        for label, n in counts.items()
    ]
    order = rng.permutation(np.concatenate(picks))
    out = base.iloc[order].reset_index(drop=True)

    tenure = out["tenure"].to_numpy() + rng.integers(-1, 2, size=rows)
    out["tenure"] = np.clip(tenure, 0, base["tenure"].max())
    factor = rng.normal(1.0, 0.02, size=rows)
    out["monthlycharges"] = (out["monthlycharges"].to_numpy() * factor).round(2)
    total = pd.to_numeric(out["totalcharges"], errors="coerce") * factor
    # Text as in the source: blanks stay blank (the pipeline has to handle them).
    out["totalcharges"] = np.where(total.isna(), out["totalcharges"], total.round(2).astype(str))
    out["customerid"] = [f"R{seed}-{i:09d}" for i in range(rows)]
    return out


def write(rows: int, seed: int, folder: Path) -> Path:
    """:func:`resample` as a Parquet file in ``folder`` (reused when already written)."""
    path = Path(folder) / f"telco_{rows}_seed{seed}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        resample(rows, seed).to_parquet(tmp, index=False)
        tmp.replace(path)
    return path
