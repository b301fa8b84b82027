"""`modelstream keys ...`: the Ed25519 pairs that sign and verify artifacts and candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelstream.cli.common import settings_of

app = typer.Typer(
    help="Ed25519 keys that sign and verify model artifacts and candidates.",
    no_args_is_help=True,
)


@app.command("generate")
def keys_generate(
    ctx: typer.Context,
    out_dir: Annotated[
        Path | None, typer.Option(help="Directory (default: the keys directory).")
    ] = None,
    keep_existing: Annotated[bool, typer.Option(help="Keep pairs that already exist.")] = False,
    only: Annotated[
        str | None,
        typer.Option(help="One pair only: modelstream, trainer, monitor or importer (rotation)."),
    ] = None,
) -> None:
    """Make the publisher's pair (modelstream.key: the publisher only; modelstream.pub: every
    consumer of `models`) and one pair per maker of candidates (trainer, monitor, importer:
    each maker its own .key; the validator, publisher and trainer every maker's .pub)."""
    from modelstream.registry.artifact import (
        MAKERS,
        generate_keys,
        generate_pair,
        key_id,
        load_public_key,
    )

    target = out_dir or settings_of(ctx).key_directory
    names = ("modelstream", *MAKERS)
    if only is not None and only not in names:
        raise typer.BadParameter(f"--only takes one of {', '.join(names)}, not {only!r}")
    if only is None:
        generate_keys(target, keep_existing=keep_existing)
    elif (target / f"{only}.key").exists() and not keep_existing:
        # a live pair replaced in place: its maker would sign with a key nobody trusts
        raise typer.BadParameter(
            f"{target / only}.key exists: write the new pair elsewhere (--out-dir new/), "
            f"then add its .pub to the keys directory as {only}.<tag>.pub"
        )
    else:
        generate_pair(target, only, keep_existing=keep_existing)
    for name in names if only is None else (only,):
        public = load_public_key(target / f"{name}.pub")
        typer.echo(f"{name:12} {target / name}.key, .pub (key id {key_id(public)})")
    if only in (None, "modelstream"):
        typer.echo(f"export MODELSTREAM_PUBLIC_KEY_FILE={target / 'modelstream.pub'}")
