"""The ``modelstream`` command line (``python -m modelstream.cli``)."""

from modelstream.cli.main import app, main

__all__ = ["app", "main"]
