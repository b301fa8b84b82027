"""`models import`'s own refusals, before it converts or sends anything (no broker here:
any attempt to reach one would fail the command in another way)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelstream.cli import app

KERAS = Path(__file__).resolve().parents[2] / "data" / "keras" / "relu_softmax.keras"


@pytest.mark.parametrize("tolerance", ["nan", "inf", "-1e-5"])
def test_a_tolerance_that_would_switch_the_check_off_is_refused(tolerance: str) -> None:
    result = CliRunner().invoke(
        app, ["models", "import", "m", str(KERAS), "--tolerance", tolerance]
    )
    assert result.exit_code == 2 and "--tolerance must be a finite number >= 0" in result.output


def test_pickle_flags_on_a_keras_file_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "import", "m", str(KERAS), "--trust-pickle"])
    assert result.exit_code != 0
    assert "--sample and --trust-pickle are for pickles" in str(result.exception or result.output)


def test_pickle_flags_on_an_onnx_file_are_refused(tmp_path: Path) -> None:
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"not even a graph")
    result = CliRunner().invoke(app, ["models", "import", "m", str(graph), "--trust-pickle"])
    assert result.exit_code == 2 and "are for pickles" in result.output
