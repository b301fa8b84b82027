"""The repository's declarative pieces stay consistent with the code."""

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelstream.contracts.codec import SCHEMA_FILES, default_codec
from modelstream.contracts.records import RECORD_TYPES
from modelstream.kafka.topology import MONITOR_HISTORY_CHANGELOG, MONITOR_LIVE_CHANGELOG, TOPOLOGY

ROOT = Path(__file__).resolve().parents[2]


def test_topology_names_are_unique_and_values_are_contracts():
    names = [t.name for t in TOPOLOGY]
    assert len(names) == len(set(names))
    codec = default_codec()
    not_avro = {"deadletter", MONITOR_HISTORY_CHANGELOG, MONITOR_LIVE_CHANGELOG}  # faust: JSON
    for spec in TOPOLOGY:
        if spec.name not in not_avro:
            codec.schema(RECORD_TYPES[spec.value])  # raises for an undeclared contract
    registry = {t.name: t for t in TOPOLOGY}
    assert registry["models"].config["cleanup.policy"] == "compact"


def test_every_schema_file_is_loaded():
    on_disk = {p.stem for p in (ROOT / "schemas").glob("*.avsc")}
    assert on_disk == set(SCHEMA_FILES)


def test_only_one_top_level_import_name(tmp_path):
    import modelstream.services.trainer as trainer

    assert trainer.__name__.startswith("modelstream.services.")
    # From outside the checkout, only what the installed distribution provides is importable.
    top_level = subprocess.run(
        [sys.executable, "-c", "import services"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert top_level.returncode != 0, "a bare `services` package must not be importable"


def test_no_service_imports_another_service():
    services = [p for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()]
    for service in services:
        others = {s.name for s in services} - {service.name}
        for source in service.rglob("*.py"):
            text = source.read_text()
            for other in others:
                assert f"modelstream.services.{other}" not in text, (source, other)


KAFKA_IMPORTS = ("aiokafka", "faust", "modelstream.kafka")


def _imports(source: Path) -> set[str]:
    tree = ast.parse(source.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_logic_and_learning_code_never_touches_kafka():
    pure = [
        *(ROOT / "services").glob("*/logic.py"),
        *(ROOT / "services").glob("*/logic/*.py"),
        *(ROOT / "modelstream" / "learn").glob("*.py"),
        *(ROOT / "modelstream" / "contracts").glob("*.py"),
    ]
    assert pure
    for source in pure:
        kafka = {name for name in _imports(source) if name.startswith(KAFKA_IMPORTS)}
        assert not kafka, f"{source.relative_to(ROOT)} imports {sorted(kafka)}"


def _compose(*args):
    if shutil.which("docker") is None:
        if os.environ.get("CI"):
            pytest.fail("the docker client is required under CI")
        pytest.skip("docker client not installed")
    return subprocess.run(
        ["docker", "compose", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_compose_config_is_valid():
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_services_run_commands_that_exist():
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    ours = {n: s for n, s in config["services"].items() if s.get("image") == "modelstream:latest"}
    assert {"topics", "trainer", "validator", "publisher", "predictor"} <= set(ours)
    for name, service in ours.items():
        command = service["command"]
        if service.get("entrypoint") == ["sh", "-c"]:  # a shell line: its modelstream command
            command = shlex.split(command[0].split("&&")[0])
            assert command[0] == "modelstream", (name, command)
            command = command[1:]
        argv = [a for a in command if not a.startswith("-")][:2]
        if argv[0] == "run":
            argv = argv[:1]
        helped = subprocess.run(
            [sys.executable, "-m", "modelstream.cli", *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert helped.returncode == 0, (name, argv, helped.stderr)


CODE_BEARING = ("pickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "h5py", "keras")


def test_only_models_import_opens_pickles_and_keras_files():
    """Pickles and Keras files are opened by `models import` on the user's machine, in
    modelstream/convert, and nowhere else: no service and no library module can unpickle
    what a topic carries."""
    for source in [*(ROOT / "services").rglob("*.py"), *(ROOT / "modelstream").rglob("*.py")]:
        relative = source.relative_to(ROOT)
        if relative.parts[:2] == ("modelstream", "convert"):
            continue
        found = {
            name
            for name in _imports(source)
            if name.split(".")[0] in CODE_BEARING or name.startswith("modelstream.convert")
        }
        if relative == Path("modelstream/cli/models.py"):
            found -= {"modelstream.convert"}  # the import command itself
        assert not found, f"{relative} imports {sorted(found)}"
