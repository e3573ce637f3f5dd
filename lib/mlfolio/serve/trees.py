"""XGBoost's binary:logistic trees evaluated with NumPy, for the few rows of a micro-batch.

XGBoost's own ``predict_proba`` costs ~0.3 ms a call however few the rows (its proxy
matrix, JSON config and thread pool, per call), which is most of a 1-row request to a
served XGBoost model. The same trees as arrays cost ~0.05 ms for a row. Every step is the
float32 arithmetic of XGBoost's CPU predictor: features rounded to float32, ``value <
split`` goes left and a missing value the default way, leaf values added to the base
margin tree after tree in float32, and the sigmoid through the C library's ``expf``, as
XGBoost calls it. :func:`mlfolio.serve.scorer.verify` checks the result equals XGBoost's,
bit for bit, on the probe rows when the model loads; any difference and the server scores
through XGBoost itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
from functools import cache
from typing import Any

import numpy as np

from mlfolio.errors import NotCompilable


@cache
def _libm() -> ctypes.CDLL:
    path = ctypes.util.find_library("m")
    if path is None:
        raise NotCompilable("no C math library to call expf from")
    libm = ctypes.CDLL(path)
    for name in ("expf", "logf"):
        fn = getattr(libm, name)
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return libm


def _base_margin(base_score: str) -> np.float32:
    """The learner's base score (a probability) as a margin, as XGBoost's logistic
    objective makes it: ``-logf(1.0f / base_score - 1.0f)``, in float32."""
    values = base_score.strip("[]").split(",")
    if len(values) != 1:
        raise NotCompilable(f"base_score {base_score!r}: one value expected")
    b = np.float32(float(values[0]))
    return np.float32(-_libm().logf(float(np.float32(1.0) / b - np.float32(1.0))))


class XGBoostTrees:
    """``XGBClassifier.predict_proba`` (binary:logistic, gbtree, numerical splits) on a
    dense float64 feature matrix; raises NotCompilable for any other model.

    ``max_rows``: batches up to this many rows are worth it; past it the arrays grow with
    rows x trees and XGBoost's own predictor is faster.
    """

    max_rows = 16  # measured: trees 0.07 ms at 1 row, 0.29 at 16; XGBoost 0.5-0.55 ms

    def __init__(self, estimator: Any, width: int):
        try:
            import xgboost
        except ImportError:  # pragma: no cover - xgboost is a dependency
            raise NotCompilable("xgboost is not installed") from None
        if type(estimator) is not xgboost.XGBClassifier:
            raise NotCompilable("not an XGBClassifier")
        missing = estimator.missing
        if missing is not None and not (isinstance(missing, float) and math.isnan(missing)):
            raise NotCompilable(f"missing={missing!r}: only NaN marks a missing value here")
        learner = json.loads(bytes(estimator.get_booster().save_raw("json")))["learner"]
        if learner["objective"]["name"] != "binary:logistic":
            raise NotCompilable(f"objective {learner['objective']['name']}")
        booster = learner["gradient_booster"]
        if booster["name"] != "gbtree":
            raise NotCompilable(f"booster {booster['name']}")
        params = learner["learner_model_param"]
        if int(params["num_feature"]) != width or int(params.get("num_class", 0)) > 1:
            raise NotCompilable("feature or class count")
        trees = booster["model"]["trees"]
        per_round = int(booster["model"]["gbtree_model_param"].get("num_parallel_tree", 1))
        best = getattr(estimator, "best_iteration", None)  # early stopping: the wrapper
        if best is not None:  # predicts with the trees up to the best round only
            trees = trees[: (int(best) + 1) * per_round]
        if not trees:
            raise NotCompilable("no trees")
        self.base = _base_margin(params["base_score"])
        self.width = width
        left, right, feature, cond, default_left, roots = [], [], [], [], [], []
        depth = 0
        for tree in trees:
            if any(int(t) != 0 for t in tree.get("split_type", ())):
                raise NotCompilable("categorical splits")
            offset = len(left)
            roots.append(offset)
            lc, rc = tree["left_children"], tree["right_children"]
            for nid, (a, b) in enumerate(zip(lc, rc, strict=True)):
                leaf = a == -1
                # A leaf points to itself: the walk below runs a fixed number of steps.
                left.append(offset + (nid if leaf else a))
                right.append(offset + (nid if leaf else b))
            feature += tree["split_indices"]
            cond += tree["split_conditions"]  # a leaf's holds its value
            default_left += [bool(d) for d in tree["default_left"]]
            depth = max(depth, _depth(lc, rc))
        self.left = np.asarray(left, dtype=np.intp)
        self.right = np.asarray(right, dtype=np.intp)
        self.feature = np.asarray(feature, dtype=np.intp)
        self.cond = np.asarray(cond, dtype=np.float32)
        self.default_left = np.asarray(default_left, dtype=bool)
        self.roots = np.asarray(roots, dtype=np.intp)
        self.depth = depth
        if self.feature.max(initial=0) >= width:
            raise NotCompilable("a split on a feature past the matrix")
        self.expf = _libm().expf

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        n = Z.shape[0]
        X = Z.astype(np.float32).ravel()  # as XGBoost reads a float64 matrix
        missing = np.isnan(X)
        any_missing = bool(missing.any())
        node = np.tile(self.roots, (n, 1))
        row_start = (np.arange(n, dtype=np.intp) * self.width)[:, None]
        for _ in range(self.depth):
            at = row_start + self.feature[node]
            go_left = X[at] < self.cond[node]
            if any_missing:
                go_left = np.where(missing[at], self.default_left[node], go_left)
            node = np.where(go_left, self.left[node], self.right[node])
        terms = np.empty((n, node.shape[1] + 1), dtype=np.float32)
        terms[:, 0] = self.base
        terms[:, 1:] = self.cond[node]
        # tree after tree, in float32, as XGBoost's predictor adds them
        margin = np.cumsum(terms, axis=1, dtype=np.float32)[:, -1]
        # XGBoost's sigmoid: 1 / (expf(min(-x, 88.7)) + 1), in float32
        exp = np.fromiter(
            (self.expf(v) for v in np.minimum(-margin, np.float32(88.7)).tolist()),
            dtype=np.float32,
            count=n,
        )
        out = np.empty((n, 2), dtype=np.float32)
        np.divide(np.float32(1.0), exp + np.float32(1.0), out=out[:, 1])
        np.subtract(np.float32(1.0), out[:, 1], out=out[:, 0])
        return out


def _depth(left: list[int], right: list[int]) -> int:
    """The number of splits on the longest path from the root to a leaf."""
    deepest, stack = 0, [(0, 0)]
    while stack:
        nid, d = stack.pop()
        if left[nid] == -1:
            deepest = max(deepest, d)
        else:
            stack += [(left[nid], d + 1), (right[nid], d + 1)]
    return deepest
