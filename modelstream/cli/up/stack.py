"""`modelstream up`: the whole pipeline on one machine, watched from one terminal.

:class:`Stack` starts the embedded broker (unless ``MODELSTREAM_BOOTSTRAP_SERVERS`` names
another), creates the topics and keys, and runs every service as a child process with its
log under ``<state dir>/logs/``. :class:`LiveView` scrapes the children's ``/metrics`` and
renders one screen. :func:`drive_demo` plays a real data set through the system: training
examples, a first published version, then requests and their labels as delayed feedback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from modelstream.errors import ConfigurationError
from modelstream.settings import Settings

DEMOS = ("breast-cancer", "digits")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int


@dataclass
class Stack:
    """The broker (when embedded) and one process per service."""

    settings: Settings
    predictors: int = 2
    metrics_base_port: int = 9101
    children: list[Child] = field(default_factory=list)
    started_broker: bool = False

    @property
    def log_dir(self) -> Path:
        return self.settings.state_dir / "logs"

    @property
    def keys_dir(self) -> Path:
        return self.settings.state_dir / "keys"

    def start(self, say: Callable[[str], None]) -> None:
        from modelstream.artifact import generate_keys
        from modelstream.broker import EmbeddedCluster
        from modelstream.topics import create_topics

        if self.settings.embedded:
            say(f"starting the embedded Kafka broker on {self.settings.bootstrap} ...")
            self.started_broker = bool(EmbeddedCluster(self.settings).start())
        report = asyncio.run(create_topics(self.settings))
        say(f"broker {self.settings.bootstrap}: {len(report.created)} topics created, "
            f"{len(report.existing)} already there")
        generate_keys(self.keys_dir, keep_existing=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        base = self.metrics_base_port
        plan = [("trainer", base, {}), ("validator", base + 1, {}),
                ("publisher", base + 2,
                 {"MODELSTREAM_PRIVATE_KEY_FILE": str(self.keys_dir / "modelstream.key")}),
                ("monitor", base + 4, {})]
        plan += [("predictor", base + 3 if i == 0 else base + 10 + i,
                  {"MODELSTREAM_INSTANCE_ID": str(i)}) for i in range(self.predictors)]
        busy = [port for _, port, _ in plan if not _port_free(port)]
        if busy:
            raise ConfigurationError(
                f"/metrics port(s) {busy} are in use; choose others with --metrics-base-port")
        for service, port, extra in plan:
            self._spawn(service, port, extra)
        (self.settings.state_dir / "up.pids").write_text(
            "".join(f"{c.process.pid} {c.name}\n" for c in self.children))
        say(f"started {len(self.children)} service processes; logs in {self.log_dir}")

    def _spawn(self, service: str, port: int, extra: dict[str, str]) -> None:
        instance = extra.get("MODELSTREAM_INSTANCE_ID")
        name = service if instance is None else f"{service}-{instance}"
        env = {**os.environ, "MODELSTREAM_BOOTSTRAP_SERVERS": self.settings.bootstrap,
               "MODELSTREAM_TOPIC_PREFIX": self.settings.topic_prefix,
               "MODELSTREAM_STATE_DIR": str(self.settings.state_dir),
               "MODELSTREAM_PUBLIC_KEY_FILE": str(self.keys_dir / "modelstream.pub"),
               "MODELSTREAM_METRICS_PORT": str(port), **extra}
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "modelstream.cli", "run", service], env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # Ctrl-C reaches `up`, which stops them in order
        self.children.append(Child(name, process, log_path, port))

    def stop(self, say: Callable[[str], None], timeout_s: float = 30.0) -> None:
        from modelstream.broker import EmbeddedCluster

        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop in {timeout_s:.0f} s; killing it")
                child.process.kill()
                child.process.wait()
        codes = ", ".join(f"{c.name}={c.process.returncode}" for c in self.children)
        say(f"services stopped ({codes})")
        if self.started_broker:
            EmbeddedCluster(self.settings).stop()
            say("embedded broker stopped")


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def scrape(port: int) -> Samples:
    """Every modelstream sample a child serves, keyed by (name, sorted labels)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=1).read().decode()
    except OSError:
        return {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("modelstream_"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name
               and all(dict(labels).get(k) == want for k, want in match.items()))


def by_label(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for (n, labels), value in samples.items():
        if n == name:
            label_map = dict(labels)
            out[tuple(label_map.get(k, "") for k in keys)] = value
    return out


class LiveView:
    """One screen: services, production versions, rates, live accuracy, dead letters, lag."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.previous: tuple[float, float, float] | None = None  # (time, requests, predictions)
        self.status = ""

    def sample(self) -> dict[str, Samples]:
        return {c.name: scrape(c.metrics_port) for c in self.stack.children}

    def frame(self) -> str:
        scraped = self.sample()
        everything: Samples = {}
        for samples in scraped.values():
            for key, value in samples.items():
                everything[key] = everything.get(key, 0.0) + value
        predictors = [s for name, s in scraped.items() if name.startswith("predictor")]
        requests = sum(total(s, "modelstream_events_consumed_total", service="predictor")
                       for s in predictors)
        predictions = total(everything, "modelstream_predictions_total")
        now = time.monotonic()
        req_rate = pred_rate = 0.0
        if self.previous is not None and now > self.previous[0]:
            dt = now - self.previous[0]
            req_rate = (requests - self.previous[1]) / dt
            pred_rate = (predictions - self.previous[2]) / dt
        self.previous = (now, requests, predictions)
        lines = [f"modelstream up - broker {self.stack.settings.bootstrap} - "
                 f"{time.strftime('%H:%M:%S')}   (Ctrl-C stops everything)", ""]
        state = "  ".join(f"{c.name} {'up' if c.process.poll() is None else 'EXITED'}"
                          for c in self.stack.children)
        lines.append(f"services     {state}")
        versions: dict[str, int] = {}
        for samples in predictors:
            for (model,), v in by_label(samples, "modelstream_production_version",
                                        "model").items():
                versions[model] = max(versions.get(model, 0), int(v))
        shown = ", ".join(f"{m} v{v}" for m, v in sorted(versions.items())) or "none yet"
        lines.append(f"production   {shown}")
        lines.append(f"requests     {requests:10,.0f} total {req_rate:8,.0f}/s")
        lines.append(f"predictions  {predictions:10,.0f} total {pred_rate:8,.0f}/s")
        accuracy = by_label(everything, "modelstream_live_accuracy_ratio", "model", "version")
        window = by_label(everything, "modelstream_live_window_labels", "model", "version")
        for (model, version), value in sorted(accuracy.items()):
            labels = window.get((model, version), 0.0)
            live = "  <- production" if versions.get(model) == int(version) else ""
            lines.append(f"live acc.    {model} v{version}: {value:.4f} over the last "
                         f"{labels:,.0f} labels{live}")
        if not accuracy:
            lines.append("live acc.    waiting for labelled feedback")
        lines.append(
            f"online       {total(everything, 'modelstream_labels_joined_total'):,.0f} labels "
            f"joined, {total(everything, 'modelstream_online_labels_learned_total'):,.0f} "
            f"learned, {total(everything, 'modelstream_online_candidates_total'):,.0f} "
            f"candidates, {total(everything, 'modelstream_drift_events_total'):,.0f} drift "
            f"events, {total(everything, 'modelstream_rollbacks_requested_total'):,.0f} "
            "rollbacks")
        lines.append(
            f"lifecycle    {total(everything, 'modelstream_trainings_total'):,.0f} trained, "
            f"{total(everything, 'modelstream_validations_total'):,.0f} validated, "
            f"{total(everything, 'modelstream_validations_rejected_total'):,.0f} rejected, "
            f"{total(everything, 'modelstream_models_published_total'):,.0f} published")
        dead = by_label(everything, "modelstream_dead_letters_total", "service")
        dead_text = ", ".join(f"{s} {v:,.0f}" for (s,), v in sorted(dead.items()) if v) or "0"
        lines.append(f"dead letters {dead_text}")
        lag = sum(total(s, "modelstream_consumer_lag_records") for s in predictors)
        lines.append(f"lag          predictors {lag:,.0f} records behind `requests`")
        if self.status:
            lines += ["", self.status]
        return "\n".join(lines)


# -- the demo ---------------------------------------------------------------------------------
def demo_dataset(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from sklearn.datasets import load_breast_cancer, load_digits

    data = load_breast_cancer() if name == "breast-cancer" else load_digits()
    names = ([str(n) for n in data.feature_names] if name == "breast-cancer"
             else [f"pixel_{i}" for i in range(data.data.shape[1])])
    classes = [str(c) for c in sorted(set(data.target.tolist()))]
    return data.data.astype(np.float64), data.target, names, classes


def progress_bar(done: int, goal: int, width: int = 30) -> str:
    filled = int(width * done / goal) if goal else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{goal:,}"


async def drive_demo(settings: Settings, name: str, requests: int, rate: float,
                     label_delay_s: float, stop: asyncio.Event,
                     report: Callable[[str], None]) -> None:
    """Define the model, stream 60 % of the data set as training examples, wait for the first
    published version, then send the rest as requests (cycled up to ``requests``) at
    ``rate``/s, each followed ``label_delay_s`` later by its true label on ``feedback``."""
    from modelstream.artifact import load_public_key
    from modelstream.client import RequestEncoder
    from modelstream.codec import default_codec
    from modelstream.control import send_command
    from modelstream.definitions import Definition, command
    from modelstream.kafka import make_producer
    from modelstream.registry import load_production

    X, y, names, classes = demo_dataset(name)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.6 * len(y))
    train_rows, serve_rows = order[:cut], order[cut:]
    task = "BINARY" if len(classes) == 2 else "MULTICLASS"
    codec = default_codec()
    await send_command(settings, command(name, "DEFINE", definition=Definition(
        name=name, task=task, feature_names=tuple(names), classes=tuple(classes),
        min_examples=50), reason="modelstream up --demo"))
    producer = make_producer(settings)
    await producer.start()
    try:
        for i in train_rows:
            await producer.send(settings.topic("training"), key=name.encode(),
                                value=codec.encode("TrainingExample", {
                                    "model": name, "features": X[i].astype("<f8").tobytes(),
                                    "label": classes[int(y[i])], "example_id": f"demo-{i}",
                                    "timestamp_ms": None}))
        await producer.flush()
        report(f"demo: sent {len(train_rows)} {name} training examples; training ...")
        await send_command(settings, command(name, "TRAIN", reason="modelstream up --demo"))
        key = load_public_key(settings.state_dir / "keys" / "modelstream.pub")
        while not stop.is_set():
            if name in await load_production(settings, key):
                break
            report("demo: waiting for the first version (train -> validate -> publish) ...")
            await asyncio.sleep(1.0)
        encoder = RequestEncoder(names)
        pending: deque[tuple[float, str, str]] = deque()
        run = f"{int(time.time()) % 100000:05d}"  # request ids stay unique across runs
        started = time.monotonic()
        sent = labelled = 0
        while not stop.is_set() and (sent < requests or pending):
            now = time.monotonic()
            due = min(requests, int((now - started) * rate) + 1)
            for n in range(sent, due):
                row = serve_rows[n % len(serve_rows)]
                rid = f"demo-{run}-{n}"
                await producer.send(settings.topic("requests"), key=rid.encode(),
                                    value=encoder.encode(rid, name, X[row], packed=True,
                                                         sent_at_ms=int(time.time() * 1000)))
                pending.append((now + label_delay_s, rid, classes[int(y[row])]))
            sent = max(sent, due)
            while pending and pending[0][0] <= now:
                _, rid, label = pending.popleft()
                await producer.send(settings.topic("feedback"), key=rid.encode(),
                                    value=codec.encode("Feedback", {
                                        "request_id": rid, "model": name, "label": label,
                                        "timestamp_ms": int(time.time() * 1000)}))
                labelled += 1
            report(f"demo: requests {progress_bar(sent, requests)}   labels sent {labelled:,}")
            await asyncio.sleep(0.05)
        await producer.flush()
        if not stop.is_set():
            report(f"demo: done - {sent:,} requests and {labelled:,} labels sent; "
                   "the services keep running until Ctrl-C")
    finally:
        await producer.stop()


async def run_up(stack: Stack, demo: str | None, requests: int, rate: float,
                 label_delay_s: float, refresh_s: float, write: Callable[[str], None],
                 tty: bool) -> None:
    """Render the view until SIGINT/SIGTERM, driving the demo alongside when asked."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    view = LiveView(stack)

    def report(text: str) -> None:
        view.status = text

    demo_task = None
    if demo is not None:
        demo_task = asyncio.create_task(
            drive_demo(stack.settings, demo, requests, rate, label_delay_s, stop, report))
    try:
        while not stop.is_set():
            frame = await asyncio.to_thread(view.frame)
            write(("\x1b[H\x1b[2J" if tty else "\n") + frame + "\n")
            if demo_task is not None and demo_task.done() and demo_task.exception():
                raise demo_task.exception()  # type: ignore[misc]
            if any(c.process.poll() is not None for c in stack.children):
                exited = [c.name for c in stack.children if c.process.poll() is not None]
                write(f"\nservice(s) exited: {', '.join(exited)} - see {stack.log_dir}\n")
                break
            try:
                await asyncio.wait_for(stop.wait(), refresh_s)
            except TimeoutError:
                pass
    finally:
        stop.set()
        if demo_task is not None:
            await asyncio.gather(demo_task, return_exceptions=True)
        write("\nfinal state:\n" + await asyncio.to_thread(view.frame) + "\n")
