"""The monitor's Kafka side: three stages over one registry.

* **join** (:mod:`.join_stage`) and **learn** (:mod:`.learn_stage`) run on the streaming core
  (:class:`~modelstream.kafka.pipeline.BatchPipeline`): exactly once, state in compacted
  changelogs written in the same transactions as the outputs and input offsets, restored
  before a task processes anything. Any number of copies split their tasks.
* **quality windows** (:mod:`.windows`) run on faust-streaming: time-windowed sums for
  ``/metrics`` and the InfluxDB history, where a lost or repeated event costs nothing.
"""

from __future__ import annotations

import asyncio
import logging

from modelstream.contracts.codec import default_codec
from modelstream.errors import ConfigurationError
from modelstream.kafka.changelog import Changelog
from modelstream.kafka.clients import make_consumer, partitions_of
from modelstream.kafka.pipeline import BatchPipeline, Processor
from modelstream.kafka.topology import (
    DEADLETTER,
    FEEDBACK,
    JOIN_PARTITIONS,
    MONITOR_FEEDBACK,
    MONITOR_JOIN_STATE,
    MONITOR_LABELLED,
    MONITOR_MODEL_STATE,
    MONITOR_TOPICS,
    create_topics,
    max_message_bytes,
)
from modelstream.ops.influx import InfluxWriter
from modelstream.registry.follower import ProductionFollower, public_key
from modelstream.runner import Lifecycle
from modelstream.services.monitor.join_stage import JoinStage, join_inputs
from modelstream.services.monitor.learn_stage import LearnStage
from modelstream.services.monitor.logic import ModelWatch
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.services.monitor.windows import QualityWindows
from modelstream.telemetry import PRODUCTION_VERSION

log = logging.getLogger("modelstream.monitor")
SERVICE = "monitor"


class MonitorApp(Lifecycle):
    def __init__(self, settings: MonitorSettings) -> None:
        super().__init__()
        self.settings = settings
        codec = default_codec()
        self.registry = ProductionFollower(settings, public_key(settings), SERVICE)
        self.influx = (
            InfluxWriter(
                settings.influxdb_url,
                settings.influxdb_database,
                username=settings.influxdb_username,
                password=(
                    settings.influxdb_password.get_secret_value()
                    if settings.influxdb_password
                    else None
                ),
            )
            if settings.influxdb_url
            else None
        )
        self.join_changelog = Changelog(settings, settings.topic(MONITOR_JOIN_STATE))
        self.learn_changelog = Changelog(settings, settings.topic(MONITOR_MODEL_STATE))
        self.join = JoinStage(settings, codec, self.join_changelog, int(settings.join_ttl_s * 1000))
        self.learn = LearnStage(settings, codec, self.learn_changelog, self.registry, self.influx)
        self.learn.expired = self.join.expired_by_model
        self.join_pipeline = self._pipeline(join_inputs(settings), self.join, "monitor-join")
        self.learn_pipeline = self._pipeline(
            [settings.topic(MONITOR_LABELLED)], self.learn, "monitor-learn"
        )
        self.windows = QualityWindows(settings, codec, self.influx)

    def _pipeline(self, inputs: list[str], stage: Processor, name: str) -> BatchPipeline:
        settings = self.settings
        internal = (
            MONITOR_FEEDBACK,
            MONITOR_JOIN_STATE,
            MONITOR_LABELLED,
        )
        return BatchPipeline(
            settings,
            SERVICE,
            inputs,
            stage,
            deadletter_topic=settings.topic(DEADLETTER),
            topic_limits={settings.topic(t): max_message_bytes(t) for t in internal},
            max_records=settings.monitor_batch_max_records,
            session_timeout_s=settings.monitor_session_timeout_s,
            commit_interval_s=settings.monitor_commit_interval_ms / 1000,
            name=name,
        )

    @property
    def watches(self) -> dict[str, ModelWatch]:
        return self.learn.watches

    def joined_total(self, model: str) -> int:
        """Labels of ``model`` this copy's learner holds as joined (0 before the first)."""
        watch = self.learn.watches.get(model)
        return watch.joined_total if watch is not None else 0

    def request_stop(self) -> None:
        super().request_stop()
        self.join_pipeline.request_stop()
        self.learn_pipeline.request_stop()

    async def start(self) -> None:
        await create_topics(self.settings, only=MONITOR_TOPICS, reconcile=False)
        await self._check_partitions()
        if self.influx is not None:
            await self.influx.start()
        await self.own(self.registry)
        await self.registry.load()
        for name, verified in self.registry.production.items():
            PRODUCTION_VERSION.labels(SERVICE, name).set(verified.body["version"])
        await self.own(self.join_changelog)
        await self.own(self.learn_changelog)
        (self.settings.state_dir / "monitor-windows").mkdir(parents=True, exist_ok=True)
        await self.windows.start()
        await self.own(self.learn_pipeline)
        await self.own(self.join_pipeline)
        log.info("monitor started on %s", self.settings.bootstrap)

    async def _check_partitions(self) -> None:
        """The join reads `feedback` in place: it must be partitioned like the join."""
        async with make_consumer(self.settings, group_id=None) as consumer:
            for name in (FEEDBACK,):
                count = len(await partitions_of(consumer, self.settings.topic(name)))
                if count != JOIN_PARTITIONS:
                    raise ConfigurationError(
                        f"the monitor's join needs {self.settings.topic(name)!r} with "
                        f"{JOIN_PARTITIONS} partitions (its join tasks); it has {count}"
                    )

    async def run(self) -> None:
        runs = [
            asyncio.create_task(self.join_pipeline.run(), name="join"),
            asyncio.create_task(self.learn_pipeline.run(), name="learn"),
        ]
        done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
        self.request_stop()  # one stage stopped (or died): stop the other too
        await asyncio.gather(*runs, return_exceptions=True)
        for run in done:
            run.result()  # a stage that died takes the service down (its supervisor restarts it)

    async def stop(self) -> None:
        await self.windows.stop()
        await super().stop()
        if self.influx is not None:
            await self.influx.stop()
        log.info(
            "monitor stopped: %d labels joined, %d records forwarded",
            self.join.joined,
            self.join.forwarded,
        )
