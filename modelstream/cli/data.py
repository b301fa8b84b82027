"""`modelstream send`, `tail` and `status`: talk to the topics as a user would."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from modelstream.cli.common import SERVICES, kafka_settings
from modelstream.contracts import tensors
from modelstream.contracts.codec import AvroCodec, default_codec
from modelstream.contracts.definitions import check_command
from modelstream.contracts.records import (
    RECORD_TYPES,
    Action,
    Command,
    Feedback,
    Label,
    ModelArtifact,
    Prediction,
    PredictionRequest,
    Task,
    TrainingExample,
)
from modelstream.errors import ConfigurationError
from modelstream.kafka.boundary import record_failure
from modelstream.kafka.clients import (
    admin_client,
    make_consumer,
    make_producer,
    partitions_of,
    read_to_end,
)
from modelstream.kafka.compat import fix_describe_groups_decoding
from modelstream.kafka.topology import TOPICS_BY_NAME
from modelstream.registry.artifact import TENSOR_FIELDS
from modelstream.registry.follower import load_production, public_key
from modelstream.settings import Settings

INPUT_TYPES: dict[str, type] = {
    "requests": PredictionRequest,
    "feedback": Feedback,
    "training": TrainingExample,
    "control": Command,
}
KEY_FIELDS = {
    "requests": "request_id",
    "feedback": "request_id",
    "training": "model",
    "control": "model",
}
app = typer.Typer()


def _csv_records(
    path: Path, topic: str, model: str | None, tasks: Mapping[str, Task]
) -> list[dict[str, Any]]:
    """CSV rows as the topic's JSON shape: feature columns become named features, and a
    label is typed by its model's task (a number for regression, a class name otherwise)."""
    reserved = {"request_id", "model", "label", "version"}
    out = []
    with path.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            where = f"{path}:{i + 2}"  # the header is line 1
            name = row.get("model") or model
            if not name:
                raise ConfigurationError(f"{path}: no `model` column; pass --model")
            record: dict[str, Any] = {"model": name}
            try:
                features = {k: float(v) for k, v in row.items() if k not in reserved}
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"{where}: a feature is not a number: {exc}") from None
            if topic in ("requests", "training"):
                record["features"] = features
            if topic in ("requests", "feedback"):
                record["request_id"] = row.get("request_id") or f"{path.stem}-{i}"
            if topic in ("training", "feedback"):
                label = row.get("label")
                if label is None:
                    raise ConfigurationError(f"{path}: a `label` column is needed for {topic}")
                record["label"] = _typed_label(label, name, tasks, where)
            if topic == "requests" and row.get("version"):
                record["version"] = int(row["version"])
            out.append(record)
    return out


def _typed_label(label: str, model: str, tasks: Mapping[str, Task], where: str) -> Label:
    task = tasks.get(model)
    if task is None:
        raise ConfigurationError(
            f"{where}: model {model!r} is not defined (modelstream models define {model} ...)"
        )
    if task != Task.REGRESSION:
        return label
    try:
        return float(label)
    except ValueError:
        raise ConfigurationError(
            f"{where}: {model} is a regression model; its label {label!r} is not a number"
        ) from None


async def defined_tasks(settings: Settings) -> dict[str, Task]:
    """The task of every model, as its newest DEFINE command on ``control`` says."""
    codec = default_codec()
    tasks: dict[str, Task] = {}
    async for record in read_to_end(settings, settings.topic("control")):
        try:
            cmd = codec.decode_any(record.value, Command, settings.limits())
            check_command(cmd)
        except Exception as exc:
            if record_failure(exc) is None:
                raise
            continue
        if cmd["action"] == Action.DEFINE and cmd["definition"] is not None:
            tasks[cmd["model"]] = Task(cmd["definition"]["task"])
    return tasks


def _tensor_input(settings: Settings, model: str, given: str | None) -> str:
    """The input a folder's files or a file's lines fill: ``--tensor``, else the only input
    of the model's production version."""
    if given:
        return given
    from modelstream.registry.tensor_model import decode_spec

    production = asyncio.run(
        load_production(settings, public_key(settings), allow_unsigned=public_key(settings) is None)
    )
    verified = production.get(model)
    graph = verified.body.get("onnx") if verified is not None else None
    spec = graph.get("spec") if graph else None
    if not spec:
        raise ConfigurationError(
            f"{model!r} has no production tensor model to name the input: pass --tensor NAME"
        )
    names = [i["name"] for i in decode_spec(spec)["inputs"]]
    if len(names) != 1:
        raise ConfigurationError(f"{model!r} takes inputs {names}: pass --tensor NAME")
    return names[0]


# What a request or example adds to its tensor's bytes (ids, names, framing), at most.
RECORD_OVERHEAD = 1024


@dataclass(frozen=True)
class TensorRow:
    """One row of files or lines: where it comes from, its bytes (or the file to read
    them from when it is sent), and its label."""

    where: str
    source: Path | bytes
    label: str | None


def _tensor_rows(path: Path, topic: str, label: str | None, limit: int) -> list[TensorRow]:
    """A folder's files (each file one row: images, documents, any file; for ``training``
    each subfolder's name is its files' label) or a text file's lines (for ``training``,
    ``LABEL<TAB>TEXT``), checked before anything is sent; files are read when sent."""
    if topic not in ("requests", "training"):
        raise ConfigurationError("files and text lines go to requests or training")
    rows: list[TensorRow] = []
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            size = file.stat().st_size
            if size + RECORD_OVERHEAD > limit:
                raise ConfigurationError(
                    f"{file}: {size} bytes; a record takes at most {limit} "
                    "(MODELSTREAM_MAX_MESSAGE_BYTES)"
                )
            folder = file.parent.name if file.parent != path else None
            rows.append(TensorRow(str(file.relative_to(path)), file, label or folder))
    else:
        text = path.read_text("utf-8")
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is text
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            value, line_label = line, label
            if topic == "training" and label is None:
                line_label, sep, value = line.partition("\t")
                if not sep:
                    raise ConfigurationError(f"{path}:{n}: a training line is LABEL<TAB>TEXT")
            rows.append(TensorRow(f"{path.name}:{n}", value.encode(), line_label))
    if topic == "training":
        unlabelled = next((r for r in rows if r.label is None), None)
        if unlabelled is not None:
            raise ConfigurationError(
                f"{unlabelled.where}: no label (a subfolder per label, LABEL<TAB>TEXT, or --label)"
            )
    return rows


async def _send_tensor_rows(
    settings: Settings,
    topic: str,
    model: str,
    tensor: str,
    rows: list[TensorRow],
    as_json: bool,
) -> None:
    """Each row as a request or example of one BYTES tensor, read, encoded and produced
    one after another (a folder of images is never in memory at once)."""
    codec = default_codec()
    record_type = INPUT_TYPES[topic]
    batch = f"{time.time_ns() % 10**9:09d}"  # request ids stay unique across sends
    async with make_producer(settings) as producer:
        pending = []
        for n, row in enumerate(rows):
            data = row.source.read_bytes() if isinstance(row.source, Path) else row.source
            record: dict[str, Any] = {
                "model": model,
                "tensors": [tensors.from_elements(tensor, [data])],
            }
            if topic == "requests":
                stem = Path(row.where.replace("/", "_").split(":")[0]).stem
                record["request_id"] = f"{stem[:200]}-{batch}-{n}"
                key = record["request_id"].encode()
            else:
                record["label"] = row.label
                key = model.encode()
            value = codec.encode(record_type, record)
            try:
                codec.decode(value, record_type, settings.limits())
            except Exception as exc:
                failure = record_failure(exc)
                if failure is None:
                    raise
                raise ConfigurationError(
                    f"{row.where}: {failure.reason}: {failure.error}"
                ) from None
            if as_json:
                value = codec.encode_json(record_type, codec.decode(value, record_type))
            pending.append(await producer.send(settings.topic(topic), key=key, value=value))
            if len(pending) >= 256:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)


@app.command("send")
def send(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="A .jsonl (one JSON object per line) or .csv file; a folder of files (images, "
            "documents: each file one row of a tensor model); a .txt file (each line a text).",
        ),
    ],
    topic: Annotated[str, typer.Option(help="requests, feedback, training or control.")],
    model: Annotated[
        str | None, typer.Option(help="Model name for rows without one (CSV, files, text).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Send the JSON text instead of Avro.")
    ] = False,
    tensor: Annotated[
        str | None,
        typer.Option(
            help="Files and text lines: the input tensor they fill (default: the model's only "
            "input)."
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="Files and text lines sent to training: their label.")
    ] = None,
) -> None:
    """Validate every record against the topic's contract, then produce them all."""
    if topic not in INPUT_TYPES:
        raise typer.BadParameter(f"topic must be one of {', '.join(INPUT_TYPES)}")
    record_type = INPUT_TYPES[topic]
    codec = default_codec()
    settings = kafka_settings(ctx)
    if path.is_dir() or path.suffix == ".txt":
        if model is None:
            raise typer.BadParameter("files and text lines need --model")
        rows = _tensor_rows(path, topic, label, settings.max_message_bytes)
        name = _tensor_input(settings, model, tensor)
        asyncio.run(_send_tensor_rows(settings, topic, model, name, rows, as_json))
        typer.echo(f"sent {len(rows)} {record_type.__name__} record(s) to {settings.topic(topic)}")
        return
    if path.suffix == ".csv":
        tasks = asyncio.run(defined_tasks(settings)) if topic in ("training", "feedback") else {}
        texts = [
            (f"{path} row {n}", json.dumps(item).encode())
            for n, item in enumerate(_csv_records(path, topic, model, tasks), 1)
        ]
    else:
        texts = [
            (f"{path}:{n}", line.encode())
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip()
        ]
    limits = settings.limits()
    messages = []
    for where, text in texts:
        try:
            record: dict[str, Any] = codec.decode_any(text, record_type, limits)
            if record_type is Command:
                check_command(cast(Command, record))
        except Exception as exc:
            failure = record_failure(exc)
            if failure is None:
                raise
            raise ConfigurationError(f"{where}: {failure.reason}: {failure.error}") from None
        key = str(record[KEY_FIELDS[topic]]).encode()
        messages.append((key, text if as_json else codec.encode(record_type, record)))

    async def produce() -> None:
        async with make_producer(settings) as producer:
            futures = [
                await producer.send(settings.topic(topic), key=k, value=v) for k, v in messages
            ]
            await asyncio.gather(*futures)

    asyncio.run(produce())
    typer.echo(f"sent {len(messages)} {record_type.__name__} record(s) to {settings.topic(topic)}")


@app.command("tail")
def tail(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="Any modelstream topic, e.g. predictions.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = False,
    limit: Annotated[int, typer.Option(help="Stop after this many records (0: follow).")] = 0,
    idle_exit: Annotated[
        float,
        typer.Option(
            help="With --from-beginning: stop after this many seconds without records (0: never)."
        ),
    ] = 0.0,
) -> None:
    """Print a topic's records decoded (Avro or JSON); dead letters show their headers."""
    spec = TOPICS_BY_NAME.get(topic)
    if spec is None:
        raise typer.BadParameter(f"unknown topic {topic!r}")
    settings = kafka_settings(ctx)
    codec = default_codec()

    async def follow() -> None:
        async with make_consumer(settings, group_id=None, fetch_max_wait_ms=100) as consumer:
            tps = await partitions_of(consumer, settings.topic(topic))
            consumer.assign(tps)
            if from_beginning:
                await consumer.seek_to_beginning(*tps)
            else:
                await consumer.seek_to_end(*tps)
            shown, last = 0, time.monotonic()
            while not limit or shown < limit:
                batch = await consumer.getmany(timeout_ms=500)
                if not batch and idle_exit and time.monotonic() - last > idle_exit:
                    return
                for records in batch.values():
                    for record in records:
                        last = time.monotonic()
                        typer.echo(_render(codec, spec.value, record, as_json))
                        shown += 1
                        if limit and shown >= limit:
                            return

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass


def _render(codec: AvroCodec, type_name: str, record: ConsumerRecord, as_json: bool) -> str:
    key = record.key.decode(errors="replace") if record.key else ""
    record_type = RECORD_TYPES.get(type_name)
    value: Any
    if record_type is not None:
        try:
            value = codec.to_plain(record_type, codec.decode_any(record.value, record_type))
        except Exception as exc:
            failure = record_failure(exc)
            if failure is None:
                raise
            value = {"undecodable": f"{failure.reason}: {failure.error}"}
        if record_type is Prediction and not as_json and isinstance(value, dict):
            value = _short_prediction(value)
        elif record_type in (PredictionRequest, TrainingExample) and not as_json:
            for item in value.get("tensors") or []:
                item["data"] = _short_data(item["data"])
        if record_type is ModelArtifact and "body" in value:
            # weights are bytes: show what they are, not them
            body = value["body"]
            for tensor in TENSOR_FIELDS:
                body[tensor] = {"dtype": body[tensor]["dtype"], "shape": body[tensor]["shape"]}
    else:
        value = {
            "headers": {k: v.decode(errors="replace") for k, v in record.headers},
            "value": None if record.value is None else record.value.decode(errors="replace"),
        }
    if as_json:
        return json.dumps(value, separators=(",", ":"))
    return f"{record.partition}:{record.offset} {key} {json.dumps(value)}"


TOP_K = 5


def _short_prediction(value: dict[str, Any]) -> dict[str, Any]:
    """A prediction for the eye: its top scores (highest first), its output tensors as
    datatype and shape, not a wall of numbers (``--json`` keeps everything)."""
    scores = value.get("scores") or {}
    if len(scores) > TOP_K:
        best = sorted(scores.items(), key=lambda kv: -kv[1])[:TOP_K]
        value["scores"] = {k: round(v, 6) for k, v in best}
        value["scores_kept"] = f"top {TOP_K} of {len(scores)}"
    outputs = value.get("outputs")
    if outputs:
        value["outputs"] = {o["name"]: f"{o['datatype']}{o['shape']}" for o in outputs}
    else:
        value.pop("outputs", None)
    return value


def _short_data(data: Any) -> Any:
    """A tensor's data, cut to what a terminal line can show."""
    text = json.dumps(data)
    return data if len(text) <= 120 else f"{text[:100]}... ({len(text)} characters)"


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Broker, topics, each service's consumer group (members, lag) and production models."""
    settings = kafka_settings(ctx)
    fix_describe_groups_decoding()

    async def gather() -> None:
        async with admin_client(settings) as admin, make_consumer(settings, group_id=None) as probe:
            existing = set(await admin.list_topics())
            missing = [n for n in TOPICS_BY_NAME if settings.topic(n) not in existing]
            typer.echo(
                f"broker {settings.bootstrap}: reachable; topics "
                + ("all present" if not missing else f"missing {missing}")
            )
            groups = [settings.group(s) for s in SERVICES]
            described = await admin.describe_consumer_groups(groups)
            members = {}
            for response in described:
                for group in response.groups:
                    # (error_code, group_id, state, protocol_type, protocol, members, ...)
                    members[group[1]] = (group[2], len(group[5]))
            for service in SERVICES:
                group = settings.group(service)
                state, count = members.get(group, ("Dead", 0))
                lag = await _lag(admin, probe, group)
                lag_text = "-" if lag is None else str(lag)
                up = "up" if count else "down"
                typer.echo(f"  {service:10} {up:5} members={count} state={state} lag={lag_text}")
        production = await load_production(
            settings, public_key(settings), allow_unsigned=public_key(settings) is None
        )
        if not production:
            typer.echo("models: none in production")
        for name, verified in sorted(production.items()):
            typer.echo(
                f"  model {name}: v{verified.body['version']} "
                f"({verified.digest[:12]}, {'signed' if verified.signed else 'unsigned'})"
            )

    asyncio.run(gather())  # a broker that is down or refuses us: one line (cli/failures.py)


async def _lag(admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, group: str) -> int | None:
    offsets = await admin.list_consumer_group_offsets(group)
    if not offsets:
        return None
    ends = await probe.end_offsets(list(offsets))
    return sum(
        max(0, ends[tp] - meta.offset)
        for tp, meta in offsets.items()
        if isinstance(tp, TopicPartition) and meta.offset >= 0
    )
