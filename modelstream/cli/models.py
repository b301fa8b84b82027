"""`modelstream models ...`: define models and read or drive the registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from modelstream.cli.common import csv_list, kafka_settings
from modelstream.contracts.builders import command
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import (
    Action,
    AuditEvent,
    ModelArtifact,
    Origin,
    Task,
    TrafficSplit,
)
from modelstream.convert import DEFAULT_TOLERANCE
from modelstream.errors import ArtifactVerificationError, ConfigurationError
from modelstream.kafka.boundary import record_failure
from modelstream.kafka.control import send_command
from modelstream.registry.artifact import (
    Verified,
    body_digest,
    decrypt_tensors,
    verify_record,
)
from modelstream.registry.follower import load_history, load_production, public_key
from modelstream.registry.lineage import load_lineage, retrain
from modelstream.registry.scoring import kind_of
from modelstream.registry.trained import trained_candidate
from modelstream.settings import Settings

app = typer.Typer(
    help="Define models; list, show, roll back and reproduce versions.", no_args_is_help=True
)


@app.command("define")
def define(
    ctx: typer.Context,
    name: str,
    task: Annotated[
        str, typer.Option(help="binary, multiclass, regression or embedding (imported only).")
    ],
    features: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated feature names (default: inferred from the first example)."
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class labels (default: inferred at first training)."),
    ] = None,
    retrain_every: Annotated[
        int, typer.Option(help="Train after this many new examples; 0 = only on `models train`.")
    ] = 0,
    min_examples: Annotated[int, typer.Option(help="Never train on fewer.")] = 50,
    window_size: Annotated[int, typer.Option(help="Newest examples kept for training.")] = 20000,
    cv_folds: Annotated[int, typer.Option(help="k of the validator's k-fold CV.")] = 5,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="Gate, e.g. min_accuracy=0.9 or max_rmse=3 (repeatable)."),
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Allowed drop of the primary metric against production.")
    ] = 0.01,
    l2_grid: Annotated[str | None, typer.Option(help="Comma-separated L2 strengths.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of shuffles and splits.")] = 0,
    family: Annotated[
        str, typer.Option(help="linear (logistic, softmax, linear regression) or mlp.")
    ] = "linear",
    hidden: Annotated[
        str | None,
        typer.Option(help="Comma-separated hidden layer sizes of an mlp (default 64)."),
    ] = None,
) -> None:
    """Declare (or redefine) a model with a DEFINE command on `control`."""
    thresholds: dict[str, float] = {}
    for item in threshold or []:
        key, _, value = item.partition("=")
        try:
            thresholds[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"threshold {item!r} is not KEY=NUMBER") from None
    try:
        sizes = tuple(int(v) for v in csv_list(hidden))
    except ValueError:
        raise typer.BadParameter(f"hidden sizes {hidden!r} are not integers") from None
    task_name = task.upper()
    if task_name not in Task.__members__:
        raise typer.BadParameter(f"task must be one of {', '.join(t.lower() for t in Task)}")
    definition = Definition(
        name=name,
        task=Task(task_name),
        feature_names=csv_list(features),
        classes=csv_list(classes),
        retrain_every=retrain_every,
        min_examples=min_examples,
        window_size=window_size,
        cv_folds=cv_folds,
        thresholds=thresholds,
        tolerance=tolerance,
        l2_grid=tuple(float(v) for v in csv_list(l2_grid)),
        seed=seed,
        family=family.lower(),
        hidden=sizes,
    )
    try:
        definition.check()
    except Exception as exc:
        raise typer.BadParameter(str(exc)) from None
    asyncio.run(
        send_command(kafka_settings(ctx), command(name, Action.DEFINE, definition=definition))
    )
    typer.echo(f"defined {name} ({task_name.lower()}, {definition.family})")


@app.command("train")
def train_now(ctx: typer.Context, name: str) -> None:
    """Ask the trainer to train NAME now on its current window."""
    asyncio.run(send_command(kafka_settings(ctx), command(name, Action.TRAIN)))
    typer.echo(f"train command sent for {name}")


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: str,
    version: int,
    reason: Annotated[str, typer.Option(help="Recorded on the audit topic.")] = "",
) -> None:
    """Make VERSION (from the history) production again; the publisher carries it out."""
    asyncio.run(
        send_command(
            kafka_settings(ctx), command(name, Action.ROLLBACK, version=version, reason=reason)
        )
    )
    typer.echo(f"rollback of {name} to v{version} requested")


@app.command("traffic")
def traffic(
    ctx: typer.Context,
    name: str,
    challenger: Annotated[int | None, typer.Option(help="Challenger version.")] = None,
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of requests routed to it.")
    ] = 0.0,
    shadow: Annotated[
        bool, typer.Option(help="Score the challenger on every request, to the shadow topic only.")
    ] = False,
    clear: Annotated[bool, typer.Option(help="Remove any split: production only.")] = False,
) -> None:
    """Split traffic between production and a challenger version (by request id)."""
    if clear:
        challenger, fraction, shadow = None, 0.0, False
    elif challenger is None:
        raise typer.BadParameter("give --challenger VERSION (or --clear)")
    split: TrafficSplit = {"challenger_version": challenger, "fraction": fraction, "shadow": shadow}
    asyncio.run(send_command(kafka_settings(ctx), command(name, Action.SET_TRAFFIC, traffic=split)))
    typer.echo(f"traffic for {name}: {split}")


def _summary(artifact: ModelArtifact, verified: str) -> dict[str, Any]:
    body = artifact["body"]
    return {
        "name": body["name"],
        "version": body["version"],
        "stage": body["stage"],
        "task": body["task"].lower(),
        "digest": artifact["digest"],
        "key_id": artifact["key_id"],
        "signature": verified,
        "parent_version": body["parent_version"],
        "created_at_ms": body["created_at_ms"],
        "created_by": body["created_by"],
        "kind": kind_of(body),
        "features": body["feature_names"],
        "categorical_features": [
            f
            for i in (body.get("onnx") or {"inputs": []})["inputs"]
            if i["element_type"] == "string"
            for f in i["features"]
        ],
        "graph_bytes": len(graph["graph"]) if (graph := body.get("onnx")) else 0,
        "serving_spec": _spec_summary(body),
        "classes": body["classes"],
        "encrypted": body["encryption"] is not None,
        "training": body["training"],
        "metrics": body["metrics"],
        "lineage": body["lineage"],
    }


def _spec_summary(body: Any) -> Any:
    """A tensor model's serving spec as JSON, a tokenizer file named by its size and
    SHA-256 rather than printed."""
    graph = body.get("onnx")
    if not graph or not graph.get("spec"):
        return None
    from modelstream.contracts.codec import default_codec
    from modelstream.contracts.records import ServingSpec
    from modelstream.registry.tensor_model import decode_spec

    plain = default_codec().json_form(ServingSpec).to_plain(decode_spec(graph["spec"]))
    for item in plain["inputs"]:
        text = item.get("text")
        if text and text.get("tokenizer_json"):
            raw = text["tokenizer_json"].encode()
            text["tokenizer_json"] = f"<{len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}>"
    scores = plain.get("scores")
    if scores and len(scores["labels"]) > 20:
        scores["labels"] = [*scores["labels"][:20], f"... {len(scores['labels'])} labels"]
    return plain


def _verification(settings: Settings, artifact: ModelArtifact) -> str:
    key = public_key(settings)
    if key is None:
        return "not checked (no MODELSTREAM_PUBLIC_KEY_FILE)"
    try:
        verify_record(artifact, key)
        return "verified"
    except ArtifactVerificationError as exc:
        return f"FAILED: {exc}"


@app.command("list")
def list_models(ctx: typer.Context) -> None:
    """Every model with its production version and how many versions exist."""
    settings = kafka_settings(ctx)

    async def gather() -> tuple[dict[str, Verified], dict[tuple[str, int], ModelArtifact]]:
        production = await load_production(
            settings, public_key(settings), allow_unsigned=public_key(settings) is None
        )
        return production, await load_history(settings)

    production, history = asyncio.run(gather())
    names = sorted({n for n, _ in history} | set(production))
    if not names:
        typer.echo("no published models")
        return
    typer.echo(f"{'model':24} {'production':>10} {'versions':>8}  digest        metrics")
    for name in names:
        current = production.get(name)
        count = sum(1 for n, _ in history if n == name)
        if current is None:
            typer.echo(f"{name:24} {'-':>10} {count:>8}")
            continue
        metrics = " ".join(
            f"{k}={v:.4f}"
            for k, v in sorted(current.body["metrics"].items())
            if k.startswith(("cv_", "train_accuracy", "train_rmse"))
        )
        typer.echo(
            f"{name:24} {'v' + str(current.body['version']):>10} {count:>8}  "
            f"{current.digest[:12]}  {metrics}"
        )


@app.command("show")
def show(
    ctx: typer.Context,
    name: str,
    version: Annotated[int | None, typer.Option(help="Default: the production version.")] = None,
) -> None:
    """Everything an artifact says about itself (weights omitted), as JSON."""
    settings = kafka_settings(ctx)
    artifact = _artifact(settings, name, version)
    typer.echo(json.dumps(_summary(artifact, _verification(settings, artifact)), indent=2))


def _artifact(settings: Settings, name: str, version: int | None) -> ModelArtifact:
    """The production artifact (verified when a public key is set), or a historical one."""
    key = public_key(settings)
    if version is None:
        production = asyncio.run(load_production(settings, key, allow_unsigned=key is None))
        if name not in production:
            raise ConfigurationError(f"{name!r} has no production version")
        return production[name].record
    history = asyncio.run(load_history(settings))
    if (name, version) not in history:
        raise ConfigurationError(f"{name!r} has no version {version}")
    return history[(name, version)]


@app.command("export")
def export(
    ctx: typer.Context,
    name: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the model.")],
    version: Annotated[int | None, typer.Option(help="Default: the production version.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Only onnx for now.")] = "onnx",
) -> None:
    """Write a published version as ONNX: a linear one as a standard graph (opset 17), an
    imported one as the exact bytes that were imported (a tensor model's with its serving
    spec in the metadata, so importing the file again needs no --preprocess)."""
    from modelstream.learn.linear import LinearModel
    from modelstream.learn.mlp import MLPModel
    from modelstream.registry.onnx_interop import export_onnx

    if fmt != "onnx":
        raise typer.BadParameter("the only export format is onnx")
    settings = kafka_settings(ctx)
    artifact = _artifact(settings, name, version)
    key = public_key(settings)
    verify_record(artifact, key, allow_unsigned=key is None)
    data_key = settings.data_key()
    body = decrypt_tensors(artifact["body"], data_key[0] if data_key else None)
    if body["onnx"] is not None:
        graph = body["onnx"]["graph"]
        if hashlib.sha256(graph).hexdigest() != body["onnx"]["graph_sha256"]:
            raise ArtifactVerificationError("the graph does not match its recorded SHA-256")
        spec = body["onnx"].get("spec")
        if spec:  # the serving spec rides in the graph's metadata: import reads it back
            from modelstream.registry.tensor_model import decode_spec, with_spec_metadata

            graph = with_spec_metadata(graph, decode_spec(spec))
        output.write_bytes(graph)
    else:
        model = MLPModel.from_body(body) if body["layers"] else LinearModel.from_body(body)
        output.write_bytes(
            export_onnx(model, name=name, version=body["version"], digest=artifact["digest"])
        )
    typer.echo(f"wrote {name} v{body['version']} ({artifact['digest'][:12]}) to {output}")


@app.command("import")
def import_model(
    ctx: typer.Context,
    name: str,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="An .onnx graph; a scikit-learn pickle (.joblib, .pkl, .pickle: converted, "
            "with --trust-pickle); a Keras model (.h5, .keras: read as data, converted).",
        ),
    ],
    features: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated feature names, in the order of the graph's input columns "
            "(default: the graph's metadata, its input names, else f0..fN)."
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated class labels in score-column order (default: from the graph)."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="binary, multiclass, regression or embedding (default: inferred)."),
    ] = None,
    keep_graph: Annotated[
        bool,
        typer.Option(
            "--keep-graph",
            help="Serve a purely linear graph as it is instead of converting it to the "
            "native linear kind (which the monitor can keep learning from its weights).",
        ),
    ] = False,
    preprocess: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="A serving spec (JSON, schemas/ServingSpec.avsc): which request tensors fill "
            "which graph inputs and how (images decoded and normalized, text tokenized, "
            "bytes windowed), which outputs give the scores and embeddings.",
        ),
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Unpickle the file here to convert it: unpickling runs whatever code the "
            "file names, so only for a file you made or trust. Nothing pickled leaves.",
        ),
    ] = False,
    sample: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Rows the converted pickle is checked on against the original (.csv or "
            ".jsonl by feature name; .txt, a text per line, for a text pipeline); default: "
            "rows drawn from what the estimator learned.",
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            help="How far a converted model's answers may stray from the original's on the "
            "sample rows (absolute up to 1, relative beyond)."
        ),
    ] = DEFAULT_TOLERANCE,
) -> None:
    """Import a model as a candidate; the validator gates it on recent labelled data like
    any other candidate. Any ONNX graph onnxruntime runs on CPU is accepted (scikit-learn
    pipelines, XGBoost, LightGBM, networks over features; image, text, token and byte
    models over tensors, with --preprocess or the spec an exported graph carries); a graph
    of linear operators only becomes a native linear model unless --keep-graph. Pickled
    scikit-learn models and Keras models are converted here, and what would be sent is
    checked against the original's own answers first."""
    from modelstream.contracts.codec import default_codec
    from modelstream.convert import KERAS_SUFFIXES, PICKLE_SUFFIXES, check, convert
    from modelstream.kafka.clients import make_producer
    from modelstream.kafka.topology import CANDIDATES, ensure_fits
    from modelstream.registry.artifact import MAKER_OF_ORIGIN, seal_candidate
    from modelstream.registry.importing import graph_candidate, network_candidate
    from modelstream.registry.keys import maker_key, unsigned_warning
    from modelstream.registry.tensor_model import parse_spec

    names = csv_list(features) or None
    labels = csv_list(classes) or None
    if task and task.upper() not in Task.__members__:
        raise typer.BadParameter(f"task must be one of {', '.join(t.lower() for t in Task)}")
    wanted_task = Task(task.upper()) if task else None
    if not 0.0 <= tolerance < float("inf"):  # NaN too: it would let anything through
        raise typer.BadParameter("--tolerance must be a finite number >= 0")
    created_by = f"import:{path.name}"
    if path.suffix.lower() not in PICKLE_SUFFIXES + KERAS_SUFFIXES:
        if trust_pickle or sample:
            raise typer.BadParameter("--trust-pickle and --sample are for pickles")
        spec = parse_spec(preprocess.read_text(), base=preprocess.parent) if preprocess else None
        body = graph_candidate(
            name,
            path.read_bytes(),
            features=names,
            classes=labels,
            task=wanted_task,
            keep_graph=keep_graph,
            spec=spec,
            created_by=created_by,
        )
    else:
        if preprocess:
            raise typer.BadParameter("--preprocess is for ONNX graphs over tensors")
        converted = convert(
            path,
            features=names,
            classes=labels,
            task=wanted_task,
            trust_pickle=trust_pickle,
            sample=sample,
        )
        if converted.network is not None:
            body = network_candidate(name, converted.network, created_by=created_by)
        else:  # the graph's metadata names its features, classes and task
            assert converted.graph is not None
            body = graph_candidate(
                name,
                converted.graph,
                keep_graph=keep_graph or converted.keep_graph,
                created_by=created_by,
            )
        agreement = check(body, converted, tolerance)
        typer.echo(
            f"converted from {converted.source} ({kind_of(body)}); answers as "
            f"{converted.reference} on {converted.rows_from}, within "
            f"{agreement.max_difference:.2g}"
        )
    settings = kafka_settings(ctx)
    importer_key = maker_key(settings, MAKER_OF_ORIGIN[Origin.IMPORTED], quiet=True)
    if importer_key is None:
        typer.echo(f"warning: {unsigned_warning(settings, 'importer')}", err=True)
    artifact = seal_candidate(body, importer_key)
    value = default_codec().encode(ModelArtifact, artifact)
    ensure_fits(CANDIDATES, value, name.encode())  # refused here, never half-written

    async def send() -> None:
        async with make_producer(settings) as producer:
            await producer.send_and_wait(settings.topic(CANDIDATES), key=name.encode(), value=value)

    asyncio.run(send())
    kind = kind_of(body)
    if kind == "tensor":
        used = _spec_summary(body)
        what = "inputs " + ", ".join(f"{i['name']} ({i['kind'].lower()})" for i in used["inputs"])
        if used["outputs"]:
            what += ", outputs " + ", ".join(o["name"] for o in used["outputs"])
    else:
        graph = body["onnx"]
        categorical = (
            [f for i in graph["inputs"] if i["element_type"] == "string" for f in i["features"]]
            if graph is not None
            else []
        )
        what = f"{len(body['feature_names'])} numeric features" + (
            f", categorical {categorical}" if categorical else ""
        )
    classes_text = (
        body["classes"]
        if len(body["classes"]) <= 20
        else (f"{body['classes'][:5]} and {len(body['classes']) - 5} more")
    )
    typer.echo(
        f"candidate {artifact['digest'][:12]} for {name} ({kind}, {body['task'].lower()}, "
        + what
        + (f", classes {classes_text}" if body["classes"] else "")
        + f", {len(value) / 2**20:.1f} MiB) sent for validation"
    )


@app.command("history")
def history(
    ctx: typer.Context,
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Replay `audit` into the model's timeline: trained from which offsets, validated with
    which metrics, published, rolled back or refused, and by whom."""
    settings = kafka_settings(ctx)
    for event in asyncio.run(audit_trail(settings, name)):
        if as_json:
            typer.echo(json.dumps(event, separators=(",", ":")))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["at_ms"] / 1000))
        version = f" v{event['version']}" if event["version"] is not None else ""
        digest = f" {event['digest'][:12]}" if event["digest"] else ""
        details = " ".join(f"{k}={v}" for k, v in sorted(event["details"].items()))
        typer.echo(
            f"{when} {event['event']}{version}{digest} by {event['actor']} "
            f"({event['service']}): {event['reason']} {details}".rstrip()
        )


async def audit_trail(settings: Settings, name: str) -> list[AuditEvent]:
    """Every audit event about ``name``, in the order the audit log holds them per model."""
    from modelstream.contracts.codec import default_codec
    from modelstream.kafka.clients import read_to_end
    from modelstream.kafka.topology import AUDIT

    codec = default_codec()
    events: list[AuditEvent] = []
    async for record in read_to_end(settings, settings.topic(AUDIT)):
        if record.key != name.encode():
            continue
        try:
            events.append(codec.decode_any(record.value, AuditEvent))
        except Exception as exc:
            if record_failure(exc) is None:
                raise
            continue
    return sorted(events, key=lambda e: e["at_ms"])


@app.command("reproduce")
def reproduce(ctx: typer.Context, name: str, version: int) -> None:
    """Re-read VERSION's lineage from Kafka, retrain with its recorded hyperparameters and
    seed, and say whether the result matches the published digest bit for bit."""
    settings = kafka_settings(ctx)
    history = asyncio.run(load_history(settings))
    if (name, version) not in history:
        raise ConfigurationError(f"{name!r} has no version {version}")
    artifact = history[(name, version)]
    published = artifact["body"]
    if published["lineage"]["origin"] != Origin.BATCH:
        raise ConfigurationError(f"v{version} was not trained from the training log")
    data_key = settings.data_key()
    plain = decrypt_tensors(published, data_key[0] if data_key else None)
    data = asyncio.run(load_lineage(settings, plain))
    trained = retrain(plain, data)
    # The body the trainer would have made from this run, as the publisher turned it into
    # this version (version, stage, the validator's metrics), with the original lineage,
    # parent and creation time: every field is rebuilt, tensors, layers and graph included.
    candidate = trained_candidate(
        name,
        trained,
        plain["lineage"]["ranges"],
        plain["lineage"]["example_count"],
        plain["parent_version"],
        created_at_ms=plain["created_at_ms"],
    )
    rebuilt = candidate.copy()
    rebuilt["version"], rebuilt["stage"] = plain["version"], plain["stage"]
    rebuilt["metrics"] = {
        **candidate["metrics"],
        **{k: v for k, v in plain["metrics"].items() if k.startswith("validation_")},
    }
    matches_plain = body_digest(rebuilt) == body_digest(plain)
    if published["encryption"] is None:
        matches = body_digest(rebuilt) == artifact["digest"]
        typer.echo(
            f"{name} v{version}: re-read {len(data.y)} examples; retrained digest "
            f"{body_digest(rebuilt)[:16]} vs published {artifact['digest'][:16]}: "
            + ("MATCH (bit for bit)" if matches else "MISMATCH")
        )
    else:
        matches = matches_plain
        typer.echo(
            f"{name} v{version}: weights are encrypted; compared decrypted bodies: "
            + ("MATCH (bit for bit)" if matches else "MISMATCH")
        )
    if not matches:
        ours, theirs = dict(rebuilt), dict(plain)
        differing = sorted(k for k in theirs if ours.get(k) != theirs[k])
        typer.echo(f"fields that differ: {', '.join(differing) or 'none (encoding only)'}")
        raise typer.Exit(code=1)
