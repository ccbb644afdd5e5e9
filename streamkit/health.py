"""A tiny HTTP endpoint for container health checks and, optionally, Prometheus scraping.

- ``GET /health/live``: 200 while the event loop runs (use it for the ECS container health check).
- ``GET /health/ready``: 200 once start-up finished (clients open, sinks reachable) and the worker holds
  at least one partition; 503 with the reason otherwise (use it to gate deployments).
- ``GET /metrics``: Prometheus text format, when enabled.

asyncio streams are enough for three fixed routes; no web framework is pulled in for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
import structlog

log = structlog.get_logger("streamkit.health")

Probe = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(
        self, host: str, port: int, *, live: Probe, ready: Probe, metrics: Callable[[], str] | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._live = live
        self._ready = ready
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sockets = self._server.sockets or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("health endpoint listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            status, body, content_type = self._route(parts[0] if parts else "", path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, bytes, str]:
        if method != "GET":
            return "405 Method Not Allowed", b"", "text/plain"
        if path in ("/health/live", "/health/ready"):
            ok, reason = (self._live if path.endswith("live") else self._ready)()
            body = orjson.dumps({"status": "ok" if ok else "unavailable", "reason": reason})
            return ("200 OK" if ok else "503 Service Unavailable"), body, "application/json"
        if path == "/metrics" and self._metrics is not None:
            return "200 OK", self._metrics().encode(), "text/plain; version=0.0.4"
        return "404 Not Found", b"", "text/plain"
