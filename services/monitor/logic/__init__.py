"""The monitor's decisions, pure Python/numpy/river, no Kafka, one concern per module:

* :mod:`.join` - scored rows and feedback meet by request id;
* :mod:`.quality` - live metrics per version, drift detection (errors and features);
* :mod:`.learner` - the online learner that starts from the production model;
* :mod:`.rollback` - when the newest version is worse than its parent;
* :mod:`.watch` - one model's watch: all of the above per batch of labels, and the
  decisions (retrain, roll back, export a candidate) they lead to.
"""

from modelstream.services.monitor.logic.join import FEEDBACK, PARTS, SCORED, ScoredPart
from modelstream.services.monitor.logic.watch import Decisions, Labelled, ModelWatch, WatchConfig

__all__ = [
    "FEEDBACK",
    "PARTS",
    "SCORED",
    "Decisions",
    "Labelled",
    "ModelWatch",
    "ScoredPart",
    "WatchConfig",
]
