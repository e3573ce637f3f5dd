"""A trial's CV folds boosted side by side in threads, meeting at every check.

Each fold boosts in its own thread (xgboost releases the GIL while it grows trees), at
most ``threads`` of them at once. At every check (the same boosting rounds in every
fold) the folds wait for each other; the last to arrive reports the mean of the folds'
validation AUCs at that round to the trial (step ``round - 1``, as ``xgb.cv`` with
Optuna's pruning callback does) and asks the pruner. So what the study records, and
what the pruner decides, depends on neither the number of threads nor their timing: a
seeded study gives the same trials on one core or many.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class Lockstep:
    """The meeting point of ``n_folds`` fold threads of one trial (``trial`` None: no
    pruner to ask, so the folds only share the ``threads`` slots and never wait).

    A fold thread calls :meth:`start` before boosting, :meth:`meet` at each check and
    :meth:`leave` when its boosting has ended (finished, stopped early, pruned or failed).
    """

    def __init__(self, n_folds: int, threads: int, trial: Any = None) -> None:
        self.trial = trial
        self.slots = threading.BoundedSemaphore(max(1, threads))
        self._cond = threading.Condition()
        self._active = set(range(n_folds))
        self._waiting: dict[int, tuple[int, float]] = {}  # fold -> (rounds, AUC)
        self._final: dict[int, float] = {}  # a fold that left: the AUC it ended with
        self._meeting = 0  # meetings held so far
        self.pruned_at: int | None = None  # the step at which the pruner stopped the trial
        self.failed = False  # a fold raised, or the caller stopped: all stop at a check

    @property
    def stopped(self) -> bool:
        return self.pruned_at is not None or self.failed

    def start(self) -> None:
        self.slots.acquire()

    def meet(self, fold: int, rounds: int, value: float, final: float) -> bool:
        """Fold ``fold``'s validation AUC after ``rounds`` rounds (``final``: what it
        would end with if it stopped here); True when the trial is stopped."""
        if self.trial is None or self.stopped:
            return self.stopped
        self.slots.release()  # no slot is held while waiting: a waiting fold may need it
        try:
            with self._cond:
                self._final[fold] = final
                self._waiting[fold] = (rounds, value)
                meeting = self._meeting
                self._hold_meeting_if_all_came()
                self._cond.wait_for(lambda: self._meeting != meeting)
                return self.stopped
        finally:
            self.slots.acquire()

    def leave(self, fold: int, failed: bool = False) -> None:
        """Fold ``fold`` boosts no more; the others no longer wait for it."""
        self.slots.release()
        with self._cond:
            self._active.discard(fold)
            self._waiting.pop(fold, None)
            if failed:
                self._stop_all()
            else:
                self._hold_meeting_if_all_came()

    def abort(self) -> None:
        """Stop every fold at its next check (the caller was interrupted)."""
        with self._cond:
            self._stop_all()

    def _stop_all(self) -> None:
        # Called with the condition held: wakes the waiting folds, which then stop.
        self.failed = True
        self._meeting += 1
        self._cond.notify_all()

    def _hold_meeting_if_all_came(self) -> None:
        # Called with the condition held. Every fold still boosting reaches the same
        # rounds (checks every CHECK_EVERY rounds, then at n_estimators), so the waiting
        # ones are all at one round.
        if not self._waiting or set(self._waiting) != self._active:
            return
        try:
            rounds = {r for r, _ in self._waiting.values()}
            if len(rounds) != 1:
                raise RuntimeError(f"folds met at different rounds: {sorted(rounds)}")
            (at,) = rounds
            values = {**self._final, **{f: v for f, (_, v) in self._waiting.items()}}
            if not self.stopped:
                # in fold order: a sum's last bit depends on it, and arrivals' order varies
                self.trial.report(float(np.mean([values[f] for f in sorted(values)])), at - 1)
                if self.trial.should_prune():
                    self.pruned_at = at - 1
        except BaseException:
            self._stop_all()  # the storage failed, say: no fold is left waiting
            raise
        self._waiting.clear()
        self._meeting += 1
        self._cond.notify_all()
