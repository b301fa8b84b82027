import os
import subprocess
import sys

import typer.main
from typer.testing import CliRunner

from modelstream.cli import app


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield path
        if hasattr(command, "commands"):
            yield from _commands(command, path)


def test_every_command_has_help():
    root = typer.main.get_command(app)
    paths = list(_commands(root))
    assert ("broker", "start") in paths and ("topics", "create") in paths
    runner = CliRunner()
    for path in [(), *paths]:  # in process: one interpreter start per command costs ~1 s
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_bad_setting_is_one_clear_line():
    env = {**os.environ, "MODELSTREAM_BROKER_PORT": "ninety"}
    result = subprocess.run(
        [sys.executable, "-m", "modelstream.cli", "broker", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "MODELSTREAM_BROKER_PORT" in result.stderr and "Traceback" not in result.stderr


def test_unknown_service_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "modelstream.cli", "run", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "unknown service" in result.stderr


def test_keys_generate_writes_every_pair_and_rotates_one_beside_the_live_ones(tmp_path):
    from modelstream.registry.artifact import Keyring, key_id, load_public_key

    runner = CliRunner()
    live = tmp_path / "keys"
    made = runner.invoke(app, ["keys", "generate", "--out-dir", str(live)])
    assert made.exit_code == 0, made.output
    names = {p.name for p in live.iterdir()}
    assert names == {
        f"{n}.{ext}"
        for n in ("modelstream", "trainer", "monitor", "importer")
        for ext in ("key", "pub")
    }
    trainer = key_id(load_public_key(live / "trainer.pub"))
    # a live pair is never replaced in place: its maker would sign with an untrusted key
    refused = runner.invoke(app, ["keys", "generate", "--only", "trainer", "--out-dir", str(live)])
    assert refused.exit_code == 2 and "elsewhere" in refused.output
    assert key_id(load_public_key(live / "trainer.pub")) == trainer
    rotated = runner.invoke(
        app, ["keys", "generate", "--only", "trainer", "--out-dir", str(tmp_path / "new")]
    )
    assert rotated.exit_code == 0, rotated.output
    assert {p.name for p in (tmp_path / "new").iterdir()} == {"trainer.key", "trainer.pub"}
    (live / "trainer.2027-01.pub").write_bytes((tmp_path / "new" / "trainer.pub").read_bytes())
    assert sorted(Keyring(live).makers()) == ["importer", "monitor", "trainer"]
    assert len(Keyring(live).makers()["trainer"]) == 2
