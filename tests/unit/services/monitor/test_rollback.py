from modelstream.contracts.records import Task
from modelstream.services.monitor.logic.quality import LiveMetrics, outcome
from modelstream.services.monitor.logic.rollback import should_roll_back


def test_rollback_needs_enough_labels_and_a_real_margin():
    good, bad = LiveMetrics(Task.BINARY), LiveMetrics(Task.BINARY)
    for i in range(300):
        good.add(outcome(Task.BINARY, ["0", "1"], {"0": 0.1, "1": 0.9}, "1", "1", 1.0))
        bad.add(
            outcome(Task.BINARY, ["0", "1"], {"0": 0.1, "1": 0.9}, "1", "1" if i % 2 else "0", 1.0)
        )
    metrics = {1: good, 2: bad}
    decision = should_roll_back(2, 1, metrics, margin=0.05, min_labels=200)
    assert decision is not None and decision.parent == 1
    assert "worse than parent v1" in decision.reason
    assert should_roll_back(2, 1, metrics, margin=0.05, min_labels=500) is None
    assert should_roll_back(1, None, metrics, margin=0.05, min_labels=10) is None
    assert should_roll_back(2, 1, {1: good, 2: good}, margin=0.05, min_labels=10) is None
