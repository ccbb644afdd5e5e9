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

from streamkit.errors import ConfigError

log = structlog.get_logger("streamkit.health")

Probe = Callable[[], tuple[bool, str]]

MAX_LINE_BYTES = 8 * 1024
"""Longest request or header line read (nginx's default is 8 KiB too); longer gets 431."""
MAX_HEADER_LINES = 100
_READ_TIMEOUT_S = 5.0
_DISCARD_BYTES = 1024 * 1024
"""What is read and dropped after an error answer, so the client sees the answer instead of a reset."""


class _Rejected(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_LINE_BYTES)
        except OSError as exc:  # port taken, address not on this host: a deployment setting to fix
            where = f"{self.host}:{self.port}"
            raise ConfigError("runtime.health_port", f"cannot listen on {where}: {exc.strerror or exc}") from None
        sockets = self._server.sockets or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("health endpoint listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Every outcome is an HTTP answer and at most one structured log line: an exception escaping this
        # callback would be printed by asyncio as a plain-text traceback into the JSON log stream.
        peer = _peer(writer)
        try:
            try:
                request = await self._read_request(reader)
            except _Rejected as rejected:
                log.warning(
                    "health request rejected", status=int(rejected.status[:3]), reason=rejected.reason, peer=peer
                )
                await _answer(writer, rejected.status, rejected.reason.encode(), "text/plain")
                if writer.can_write_eof():
                    writer.write_eof()  # the client reads the answer to its end and closes: no waiting
                await _discard(reader)
                return
            if request is None:
                return  # connected and closed: a TCP health check, nothing to answer or log
            method, path = request
            try:
                status, body, content_type = self._route(method, path)
            except Exception as exc:  # a probe or the metrics renderer failed: say so, keep serving
                log.error("health request failed", path=path, error=f"{type(exc).__name__}: {exc}", peer=peer)
                status, body, content_type = "500 Internal Server Error", b"", "text/plain"
            await _answer(writer, status, body, content_type)
        except (TimeoutError, ConnectionError):
            pass  # the client went away or stalled: nothing to answer
        except Exception as exc:  # anything else must not become asyncio's traceback
            log.error("health request failed", error=f"{type(exc).__name__}: {exc}", peer=peer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str] | None:
        """(method, path) of the request, None when the client closed without sending one (a load
        balancer's TCP check); headers are read and ignored. Raises _Rejected."""
        async with asyncio.timeout(_READ_TIMEOUT_S):
            request = await _read_line(reader)
            if not request:
                return None
            for _ in range(MAX_HEADER_LINES + 1):
                if (await _read_line(reader)) in (b"\r\n", b"\n", b""):
                    break
            else:
                raise _Rejected("431 Request Header Fields Too Large", f"more than {MAX_HEADER_LINES} header lines")
        parts = request.decode("latin-1").split()
        version_ok = len(parts) == 2 or (len(parts) == 3 and parts[2].startswith("HTTP/"))
        if not version_ok or not parts[1].startswith("/"):
            raise _Rejected("400 Bad Request", "not an HTTP request line")
        return parts[0], parts[1]

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


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # asyncio's LimitOverrunError surfaces as ValueError from readline()
        raise _Rejected("431 Request Header Fields Too Large", f"a line over {MAX_LINE_BYTES} bytes") from None


async def _answer(writer: asyncio.StreamWriter, status: str, body: bytes, content_type: str) -> None:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read what the client still sends (bounded) before closing: closing a socket with unread input sends a
    reset, which can destroy the answer before the client reads it."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(1.0):
            left = _DISCARD_BYTES
            while left > 0 and (chunk := await reader.read(min(left, 65536))):
                left -= len(chunk)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
