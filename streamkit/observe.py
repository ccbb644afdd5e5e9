"""What a long-lived worker exposes to its operators: the health endpoint and the metrics reporters."""

from __future__ import annotations

import asyncio
import contextlib
import time

from streamkit.config import RuntimeSettings
from streamkit.emf import EmfReporter
from streamkit.errors import ConfigError
from streamkit.health import HealthServer
from streamkit.runtime import Runtime


class Observability:
    def __init__(self, runtime: Runtime, settings: RuntimeSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.health: HealthServer | None = None
        self._stop = asyncio.Event()
        self._emf_task: asyncio.Task[None] | None = None
        self._loop_seen = time.monotonic()
        self._heartbeat: asyncio.Task[None] | None = None

    def live(self) -> tuple[bool, str]:
        # The probe itself runs on the event loop, so answering at all shows the loop is not stuck;
        # a heartbeat older than a few seconds means it was blocked until just now.
        stale = time.monotonic() - self._loop_seen
        return (stale < 10, f"event loop heartbeat {stale:.1f}s ago")

    def ready(self) -> tuple[bool, str]:
        if not self.runtime.ready.is_set():
            return False, "starting"
        held = len(self.runtime.held_partitions)
        if held == 0:
            return False, "running, but holds no partition"
        return True, f"{held} partition(s) held"

    async def _beat(self) -> None:
        while True:
            self._loop_seen = time.monotonic()
            await asyncio.sleep(1.0)

    async def start(self) -> None:
        settings = self.settings
        self._heartbeat = asyncio.create_task(self._beat())
        if settings.metrics.emf:
            reporter = EmfReporter(
                self.runtime.metrics, self.runtime.pipeline.name, namespace=settings.metrics.namespace
            )
            self._emf_task = asyncio.create_task(reporter.run(settings.metrics.interval_s, self._stop))
        if settings.health_port is not None:
            metrics = None
            if settings.metrics.prometheus:
                from streamkit.prometheus import renderer

                metrics = renderer(self.runtime.metrics, self.runtime.pipeline.name)
            self.health = HealthServer(
                settings.health_host, settings.health_port, live=self.live, ready=self.ready, metrics=metrics
            )
            try:
                await self.health.start()
            except ConfigError:
                self.health = None
                raise

    async def stop(self) -> None:
        self._stop.set()
        if self._emf_task is not None:
            with contextlib.suppress(Exception):
                await self._emf_task
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self.health is not None:
            await self.health.stop()
