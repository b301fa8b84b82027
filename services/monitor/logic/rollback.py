"""The rollback rule: the newest version is rolled back to its parent when, over enough
labels, it is worse than the parent was while it served.

>>> from modelstream.contracts.records import Task
>>> from modelstream.services.monitor.logic.quality import Outcome
>>> newest, parent = LiveMetrics(Task.BINARY), LiveMetrics(Task.BINARY)
>>> for i in range(200):
...     newest.add(Outcome(float(i % 2), 0.7, 0.6, 0.0, 10.0))
...     parent.add(Outcome(1.0, 0.1, 0.9, 0.0, 10.0))
>>> should_roll_back(2, 1, {2: newest, 1: parent}, margin=0.05, min_labels=200).parent
1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelstream.services.monitor.logic.quality import LiveMetrics


@dataclass(frozen=True)
class RollbackDecision:
    version: int
    parent: int
    newest_metric: float
    parent_metric: float
    labels: int

    @property
    def reason(self) -> str:
        return (
            f"live metric of v{self.version} {self.newest_metric:.4f} is worse than parent "
            f"v{self.parent}'s {self.parent_metric:.4f} over {self.labels} labels"
        )


def should_roll_back(
    newest: int,
    parent: int | None,
    metrics: Mapping[int, LiveMetrics],
    *,
    margin: float,
    min_labels: int,
) -> RollbackDecision | None:
    """Roll back when the newest version, after ``min_labels`` labels, is worse than what
    its parent achieved while it served, by more than ``margin``."""
    if parent is None or newest not in metrics or parent not in metrics:
        return None
    ours, theirs = metrics[newest], metrics[parent]
    if len(ours.outcomes) < min_labels or len(theirs.outcomes) < min_labels:
        return None
    if ours.primary() < theirs.primary() - margin:
        return RollbackDecision(
            newest, parent, ours.primary(), theirs.primary(), len(ours.outcomes)
        )
    return None
