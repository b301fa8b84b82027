"""The export snippets of the README's "Deploy your own model" run as written, and what they
write is a graph `models import` maps with the flags the README shows."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelstream.registry.onnx_model import check_runs, describe

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README[README.index("## Deploy your own model") : README.index("## Images and text")]
SNIPPETS = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)  # not `python no-run`


def test_the_section_has_the_three_runnable_snippets():
    assert len(SNIPPETS) == 3
    assert "```python no-run" in SECTION  # PyTorch and TensorFlow: documentation only


@pytest.mark.parametrize("snippet", SNIPPETS, ids=["scikit-learn", "xgboost", "lightgbm"])
def test_snippet_exports_a_graph_import_maps(snippet, tmp_path):
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True, timeout=300)
    (written,) = tmp_path.glob("*.onnx")
    command = re.search(r"# modelstream models import (\S+) (\S+)(.*)", snippet)
    assert command is not None and command.group(2) == written.name
    flags = command.group(3).split("(")[0].split()
    classes = flags[flags.index("--classes") + 1].split(",") if "--classes" in flags else None
    signature = describe(written.read_bytes(), classes=classes)
    check_runs(signature, command.group(1))
    assert signature.task in ("BINARY", "MULTICLASS")
