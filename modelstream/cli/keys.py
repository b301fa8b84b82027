"""`modelstream keys ...`: the Ed25519 pair that signs and verifies artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelstream.cli.common import settings_of

app = typer.Typer(help="Ed25519 keys that sign and verify model artifacts.", no_args_is_help=True)


@app.command("generate")
def keys_generate(
    ctx: typer.Context,
    out_dir: Annotated[
        Path | None, typer.Option(help="Directory (default: <state-dir>/keys).")
    ] = None,
    keep_existing: Annotated[bool, typer.Option(help="Keep a pair that already exists.")] = False,
) -> None:
    """Make a key pair: the publisher holds the private key, every consumer the public one."""
    from modelstream.registry.artifact import generate_keys, key_id, load_public_key

    target = out_dir or settings_of(ctx).state_dir / "keys"
    private_path, public_path = generate_keys(target, keep_existing=keep_existing)
    typer.echo(f"private key: {private_path} (give only to the publisher)")
    typer.echo(f"public key:  {public_path} (key id {key_id(load_public_key(public_path))})")
    typer.echo(f"export MODELSTREAM_PRIVATE_KEY_FILE={private_path}")
    typer.echo(f"export MODELSTREAM_PUBLIC_KEY_FILE={public_path}")
