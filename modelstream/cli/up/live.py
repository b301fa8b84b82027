"""The screen of `modelstream up`: scrapes every child's ``/metrics`` and renders one frame."""

from __future__ import annotations

import time
import urllib.request
from collections import deque

from prometheus_client.parser import text_string_to_metric_families

from modelstream.cli.up.stack import Child, Stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every modelstream sample a child serves, keyed by (name, sorted labels)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("modelstream_"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == want for k, want in match.items())
    )


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
        self.events: deque[str] = deque(maxlen=5)  # supervisor events, newest last

    def note(self, event: str) -> None:
        """A supervisor event, kept on the screen (the newest few)."""
        self.events.append(f"{_note_time()} {event}")

    def sample(self) -> dict[str, Samples]:
        return {c.name: scrape(c.metrics_port) for c in self.stack.children}

    def frame(self) -> str:
        scraped = self.sample()
        everything: Samples = {}
        for samples in scraped.values():
            for key, value in samples.items():
                everything[key] = everything.get(key, 0.0) + value
        predictors = [s for name, s in scraped.items() if name.startswith("predictor")]
        requests = sum(
            total(s, "modelstream_events_consumed_total", service="predictor") for s in predictors
        )
        predictions = total(everything, "modelstream_predictions_total")
        now = time.monotonic()
        req_rate = pred_rate = 0.0
        if self.previous is not None and now > self.previous[0]:
            dt = now - self.previous[0]
            req_rate = (requests - self.previous[1]) / dt
            pred_rate = (predictions - self.previous[2]) / dt
        self.previous = (now, requests, predictions)
        lines = [
            f"modelstream up - broker {self.stack.settings.bootstrap} - "
            f"{time.strftime('%H:%M:%S')}   (Ctrl-C stops everything)",
            "",
        ]
        state = "  ".join(_service_state(c) for c in self.stack.children)
        lines.append(f"services     {state}")
        versions: dict[str, int] = {}
        for samples in predictors:
            for (model,), v in by_label(samples, "modelstream_production_version", "model").items():
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
            lines.append(
                f"live acc.    {model} v{version}: {value:.4f} over the last "
                f"{labels:,.0f} labels{live}"
            )
        if not accuracy:
            lines.append("live acc.    waiting for labelled feedback")
        lines.append(
            f"online       {total(everything, 'modelstream_labels_joined_total'):,.0f} labels "
            f"joined, {total(everything, 'modelstream_online_labels_learned_total'):,.0f} "
            f"learned, {total(everything, 'modelstream_online_candidates_total'):,.0f} "
            f"candidates, {total(everything, 'modelstream_drift_events_total'):,.0f} drift "
            f"events, {total(everything, 'modelstream_rollbacks_requested_total'):,.0f} "
            "rollbacks"
        )
        lines.append(
            f"lifecycle    {total(everything, 'modelstream_trainings_total'):,.0f} trained, "
            f"{total(everything, 'modelstream_validations_total'):,.0f} validated, "
            f"{total(everything, 'modelstream_validations_rejected_total'):,.0f} rejected, "
            f"{total(everything, 'modelstream_models_published_total'):,.0f} published"
        )
        dead = by_label(everything, "modelstream_dead_letters_total", "service")
        dead_text = ", ".join(f"{s} {v:,.0f}" for (s,), v in sorted(dead.items()) if v) or "0"
        lines.append(f"dead letters {dead_text}")
        lag = sum(total(s, "modelstream_consumer_lag_records") for s in predictors)
        lines.append(f"lag          predictors {lag:,.0f} records behind `requests`")
        if self.events:
            lines += ["", *self.events]
        if self.status:
            lines += ["", self.status]
        return "\n".join(lines)


def _note_time() -> str:
    return time.strftime("%H:%M:%S")


def _service_state(child: Child) -> str:
    if child.running:
        text = f"{child.name} up"
    elif child.restart_at is not None:
        text = f"{child.name} RESTARTING (exit {child.last_exit})"
    else:
        text = f"{child.name} EXITED"
    return text + (f" ({child.restarts} restarts)" if child.restarts else "")
