"""The runnable examples in docstrings run, and say what they print."""

import doctest
import importlib

import pytest

MODULES = [
    "modelstream.contracts.client",
    "modelstream.ops.influx",
    "modelstream.learn.cv",
    "modelstream.learn.metrics",
    "modelstream.learn.objectives",
    "modelstream.learn.sgd",
    "modelstream.learn.linear",
    "modelstream.contracts.wire",
    "modelstream.services.monitor.logic.join",
    "modelstream.services.monitor.logic.quality",
    "modelstream.services.monitor.logic.learner",
    "modelstream.services.monitor.logic.rollback",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
