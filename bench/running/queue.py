"""The order a sweep's trials start in: every trial as soon as a worker is free, except that a
trial starting from a trained baseline waits for its own baseline, and only for it.

``TrialQueue`` is a Ray Tune ``Searcher`` that hands out a fixed list of trials in order. When
the next trial needs a baseline still training, it hands out the first later trial that can start
(a from-scratch method, or one whose baseline is done) and returns ``None`` ("nothing ready yet")
when none can; Tune asks again after any trial completes. A trial whose baseline failed is not
started: its row is written at once as ``BaselineFailed`` with the baseline's own error.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ray.tune.search import Searcher

from rankbench.bench.results.row import failed_row
from rankbench.bench.trial import Trial

if TYPE_CHECKING:
    from rankbench.bench.results.store import Store


def needs_baseline(t: Trial) -> bool:
    """Whether ``t`` starts from the trained dense weights of ``t.baseline()``."""
    from rankbench.methods.api.registry import needs_baseline as method_needs_baseline

    return method_needs_baseline(t.method)


class TrialQueue(Searcher):
    """Hands out ``trials`` (dense baselines first, then in spec order) as Tune configs
    ``{"trial": Trial.to_dict()}``; see the module docstring for the waiting rule.

    ``failed(trial, row)`` is called for each trial failed without starting (its row is already
    written), so the progress lines count it.
    """

    def __init__(self, trials: list[Trial], store: "Store", failed: Callable[[Trial, dict], None]):
        super().__init__()
        self.pending = list(trials)
        self.store = store
        self.on_failed = failed
        self.running: dict[str, str] = {}     # Tune's trial id -> our trial id, handed out, not complete

    def _state(self, t: Trial) -> str:
        """"ready", "wait" (its baseline trains in this run) or "failed" (its baseline did not finish)."""
        if not needs_baseline(t):
            return "ready"
        b = t.baseline()
        if b.id in self.running.values() or any(p.id == b.id for p in self.pending):
            return "wait"
        return "ready" if self.store.baseline_weights(b.id).exists() else "failed"

    def suggest(self, trial_id: str) -> dict | str | None:
        i = 0
        while i < len(self.pending):
            t = self.pending[i]
            state = self._state(t)
            if state == "wait":
                i += 1
                continue
            del self.pending[i]
            if state == "failed":
                # do not spend a worker on a trial that cannot start; record why it did not
                b = t.baseline()
                brow = self.store.read_result(b.id) or {}
                row = failed_row(t, f"BaselineFailed: baseline {b.id} ({b.label}) did not finish: "
                                    f"{brow.get('error') or 'no weights saved'}")
                self.store.write_result(row)
                self.on_failed(t, row)
                continue
            self.running[trial_id] = t.id
            return {"trial": t.to_dict()}
        return Searcher.FINISHED if not self.pending else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.running.pop(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the rows on disk are the state, and a rerun rebuilds the queue from them."""

    def restore(self, checkpoint_path: str) -> None:
        """See ``save``."""
