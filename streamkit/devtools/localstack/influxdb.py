"""A loopback stand-in for the InfluxDB write endpoints (no InfluxDB server is installable here).

It implements what the InfluxDB documentation specifies for writes, and nothing else:

- ``POST /api/v3/write_lp?db=&precision=&accept_partial=&no_sync=`` (InfluxDB 3 Core/Enterprise):
  ``Authorization: Bearer`` (or ``Token``); 204 when every line was written. With ``accept_partial=true``
  (the default) valid lines are written and the others answered with 400 and
  ``{"error": "partial write of line protocol occurred", "data": [{"original_line", "line_number",
  "error_message"}, ...]}``; with ``accept_partial=false`` nothing is written and the answer is 400
  ``{"error": "parsing failed for write_lp endpoint", "data": {...the first bad line...}}``.
- ``POST /api/v2/write?org=&bucket=&precision=`` (InfluxDB OSS 2.x, what Timestream for InfluxDB v2
  runs): ``Authorization: Token``; a malformed line rejects the whole request with 400
  ``{"code": "invalid", "message": "unable to parse '<line>': <reason>", "line": N}``; a field-type
  conflict writes the other points and answers 422 ``{"code": "unprocessable entity", "message":
  "failure writing points to database: partial write: ..."}``; an unknown bucket is 404.
- ``Content-Encoding: gzip`` bodies (several gzip members too); 413 over ``max_body_bytes``; 401 for a
  missing or wrong token; field types fixed per table and field by the first write, as InfluxDB does.

Faults are injected deliberately: :meth:`InfluxStandIn.inject` queues whole responses (429 or 503 with
``Retry-After``, any body) that the next write requests get instead of being processed. Every request is
recorded (path, query, encoding, lines; never the token) for tests to assert on.

The server runs aiohttp on its own thread and event loop, on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import orjson

from ._process import LOOPBACK, Launch, LocalServer, LocalStackError, free_port, http_status, spawn_on_ports
from .influx_lp import LineError, Point, parse_line, type_name

V3_PRECISION = {"auto": None, "nanosecond": 1, "microsecond": 1_000, "millisecond": 1_000_000, "second": 10**9}
V3_PRECISION |= {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9}
V2_PRECISION = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9}
DEFAULT_MAX_BODY = 10 * 1024 * 1024
"""InfluxDB 3's default ``--max-http-request-size`` (10 MiB)."""


@dataclass
class Injected:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WriteRequest:
    """One write request as received (the Authorization header is only checked, never kept)."""

    path: str
    query: dict[str, str]
    content_encoding: str | None
    lines: list[str]
    status: int = 0
    authorized: bool = False


def _auto_scale(timestamp: int) -> int:
    """InfluxDB 3's ``precision=auto``: the magnitude decides the unit."""
    magnitude = abs(timestamp)
    if magnitude < 5e9:
        return 10**9
    if magnitude < 5e12:
        return 1_000_000
    if magnitude < 5e15:
        return 1_000
    return 1


def _decode(raw: bytes, encoding: str | None) -> tuple[bytes | None, str | None]:
    """The request body after its Content-Encoding, or a problem to answer with 400."""
    if encoding in (None, "identity"):
        return raw, None
    if encoding != "gzip":
        return None, f"unsupported Content-Encoding {encoding!r}"
    try:
        return gzip.decompress(raw), None  # several concatenated members too
    except (OSError, EOFError) as exc:
        return None, f"bad gzip body: {exc}"


class InfluxStandIn:
    """The stand-in server. ``InfluxStandIn.start(token=...)``; ``stop()`` (or a ``with`` block)."""

    name = "influxdb stand-in"

    def __init__(
        self,
        token: str,
        *,
        org: str = "streamkit",
        buckets: tuple[str, ...] = ("metrics",),
        keep_points: bool = True,
    ) -> None:
        self._token = token
        self.keep_points = keep_points
        """False: count lines only (the benchmark), keeping no points or request records."""
        self.lines_written = 0
        self.org = org
        self.buckets = set(buckets)
        self.max_body_bytes = DEFAULT_MAX_BODY
        self.requests: list[WriteRequest] = []
        # database -> series key (table, tags, time) -> point: a point written again is the same point.
        self._points: dict[str, dict[tuple[Any, ...], Point]] = {}
        self._schema: dict[tuple[str, str, str], str] = {}
        self._injected: deque[Injected] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def start(cls, token: str, *, port: int | None = None, timeout: float = 10.0, **kwargs: Any) -> Self:
        server = cls(token, **kwargs)
        server.port = port if port is not None else free_port()
        ready = threading.Event()
        failed: list[BaseException] = []
        server._thread = threading.Thread(
            target=server._serve, args=(ready, failed), name="influxdb-stand-in", daemon=True
        )
        server._thread.start()
        if not ready.wait(timeout) or failed:
            server.stop()
            reason = f": {failed[0]}" if failed else ""
            raise LocalStackError(f"{cls.name} did not start on {LOOPBACK}:{server.port} in {timeout:.0f} s{reason}")
        return server

    def _serve(self, ready: threading.Event, failed: list[BaseException]) -> None:
        from aiohttp import web

        async def main() -> None:
            # auto_decompress off: the stand-in sees the body as sent, so a test can tell it was gzipped.
            app = web.Application(client_max_size=self.max_body_bytes * 4, handler_args={"auto_decompress": False})
            app.router.add_post("/api/v3/write_lp", self._v3)
            app.router.add_post("/api/v2/write", self._v2)
            app.router.add_get("/health", self._health)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, LOOPBACK, self.port).start()
            except OSError as exc:
                failed.append(exc)
                ready.set()
                await runner.cleanup()
                return
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            ready.set()
            await self._stopping.wait()
            await runner.cleanup()

        asyncio.run(main())

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"  # never the token

    # -- test controls ---------------------------------------------------------------------------
    def inject(
        self, status: int, body: bytes | str | dict[str, Any] = b"", headers: dict[str, str] | None = None
    ) -> None:
        """The next write request gets this response instead of being processed (FIFO)."""
        raw = orjson.dumps(body) if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
        with self._lock:
            self._injected.append(Injected(status, raw, headers or {}))

    def points(self, database: str) -> list[Point]:
        """The points of a database or bucket, in the order first written."""
        with self._lock:
            return list(self._points.get(database, {}).values())

    def rotate_token(self, token: str) -> None:
        self._token = token

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._points.clear()
            self._schema.clear()
            self._injected.clear()

    # -- handlers --------------------------------------------------------------------------------
    async def _read(self, request: Any, schemes: tuple[str, ...]) -> tuple[WriteRequest, Any]:
        """The recorded request, and a response to send instead of processing it (or None)."""
        from aiohttp import web

        raw = await request.read()
        encoding = request.headers.get("Content-Encoding")
        auth = request.headers.get("Authorization", "")
        authorized = any(auth == f"{scheme} {self._token}" for scheme in schemes)
        record = WriteRequest(request.path, dict(request.query), encoding, [], authorized=authorized)
        body, problem = _decode(raw, encoding)
        if body is not None:
            record.lines = body.decode("utf-8").split("\n")
            if record.lines and record.lines[-1] == "":
                record.lines.pop()  # a trailing newline ends the last line
        with self._lock:
            if self.keep_points:
                self.requests.append(record)
            injected = self._injected.popleft() if self._injected else None
        answer: Any = None
        if injected is not None:
            record.status = injected.status
            answer = web.Response(status=injected.status, body=injected.body, headers=injected.headers)
        elif not authorized:
            record.status = 401
            answer = web.json_response({"code": "unauthorized", "message": "unauthorized access"}, status=401)
        elif len(raw) > self.max_body_bytes:
            record.status = 413
            message = f"request body of {len(raw)} bytes exceeds the limit of {self.max_body_bytes}"
            answer = web.json_response({"code": "request too large", "message": message}, status=413)
        elif problem is not None:
            record.status = 400
            answer = web.json_response({"code": "invalid", "message": problem}, status=400)
        return record, answer

    def _parse(self, lines: list[str], scale: int | None) -> list[tuple[int, str, Point | str]]:
        """(line_number, line, Point or error message) for every line that is not a comment or blank."""
        out: list[tuple[int, str, Point | str]] = []
        now = time.time_ns()
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            try:
                point = parse_line(line)
            except LineError as exc:
                out.append((number, line, str(exc)))
                continue
            if point.timestamp is None:
                point.time_ns = now
            else:
                point.time_ns = point.timestamp * (scale if scale is not None else _auto_scale(point.timestamp))
            out.append((number, line, point))
        return out

    def _conflict(self, database: str, point: Point, pending: dict[tuple[str, str, str], str]) -> str | None:
        types = {(database, point.table, name): kind for name, kind in point.field_types().items()}
        for key, kind in types.items():
            known = self._schema.get(key) or pending.get(key)
            if known is not None and known != kind:
                return f"invalid column type for column '{key[2]}', expected {known}, got {kind}"
        pending.update(types)
        return None

    def _store(self, database: str, points: list[Point], pending: dict[tuple[str, str, str], str]) -> None:
        """Duplicate points (same table, tag set and timestamp) merge their fields, the newer winning."""
        with self._lock:
            self._schema.update(pending)
            self.lines_written += len(points)
            if not self.keep_points:
                return
            stored = self._points.setdefault(database, {})
            for point in points:
                key = (point.table, tuple(sorted(point.tags.items())), point.time_ns)
                if key in stored:
                    stored[key].fields.update(point.fields)
                else:
                    stored[key] = point

    async def _health(self, request: Any) -> Any:
        """InfluxDB's unauthenticated health check, plus what the stand-in wrote (for the benchmark)."""
        from aiohttp import web

        return web.json_response({"status": "pass", "lines_written": self.lines_written})

    async def _v3(self, request: Any) -> Any:
        from aiohttp import web

        record, answer = await self._read(request, ("Bearer", "Token"))
        if answer is not None:
            return answer
        database = request.query.get("db", "")
        precision = request.query.get("precision", "auto")
        accept_partial = request.query.get("accept_partial", "true").lower() != "false"
        if not database or precision not in V3_PRECISION:
            record.status = 400
            return web.json_response({"error": f"invalid request: db={database!r} precision={precision!r}"}, status=400)
        good: list[Point] = []
        bad: list[dict[str, Any]] = []
        pending: dict[tuple[str, str, str], str] = {}
        for number, line, parsed in self._parse(record.lines, V3_PRECISION[precision]):
            problem = parsed if isinstance(parsed, str) else self._conflict(database, parsed, pending)
            if problem is not None:
                bad.append({"original_line": line, "line_number": number, "error_message": problem})
            else:
                assert isinstance(parsed, Point)
                good.append(parsed)
        if bad and not accept_partial:
            record.status = 400
            return web.json_response({"error": "parsing failed for write_lp endpoint", "data": bad[0]}, status=400)
        self._store(database, good, pending)
        if bad:
            record.status = 400
            body = {"error": "partial write of line protocol occurred", "data": bad}
            return web.json_response(body, status=400)
        record.status = 204
        return web.Response(status=204)

    async def _v2(self, request: Any) -> Any:
        from aiohttp import web

        record, answer = await self._read(request, ("Token",))
        if answer is not None:
            return answer
        org, bucket = request.query.get("org", ""), request.query.get("bucket", "")
        precision = request.query.get("precision", "ns")
        if org != self.org:
            record.status = 404
            return web.json_response(
                {"code": "not found", "message": f'organization name "{org}" not found'}, status=404
            )
        if bucket not in self.buckets:
            record.status = 404
            return web.json_response({"code": "not found", "message": f'bucket "{bucket}" not found'}, status=404)
        if precision not in V2_PRECISION:
            record.status = 400
            return web.json_response({"code": "invalid", "message": f"invalid precision {precision!r}"}, status=400)
        parsed = self._parse(record.lines, V2_PRECISION[precision])
        for number, line, item in parsed:
            if isinstance(item, str):
                # OSS 2.x: the first malformed line rejects the whole request.
                record.status = 400
                body = {"code": "invalid", "message": f"unable to parse '{line}': {item}", "line": number}
                return web.json_response(body, status=400)
        good: list[Point] = []
        dropped: list[str] = []
        pending: dict[tuple[str, str, str], str] = {}
        for _, _, item in parsed:
            assert isinstance(item, Point)
            conflict = self._conflict(bucket, item, pending)
            if conflict is None:
                good.append(item)
            else:
                dropped.append(conflict)
        self._store(bucket, good, pending)
        if dropped:
            record.status = 422
            message = (
                f"failure writing points to database: partial write: field type conflict: {dropped[0]} "
                f"dropped={len(dropped)}"
            )
            return web.json_response({"code": "unprocessable entity", "message": message}, status=422)
        record.status = 204
        return web.Response(status=204)


TOKEN_ENV = "STREAMKIT_INFLUX_STAND_IN_TOKEN"
"""How the child process gets its token: the environment, never the command line (``ps`` shows that)."""


class InfluxStandInProcess(LocalServer):
    """The stand-in as a child process (its own interpreter, so it does not share a GIL with what it
    measures), keeping no points; stopped by PID. ``lines_written()`` asks it how many lines it took."""

    name = "influxdb-stand-in"

    @classmethod
    def start(cls, token: str, *, port: int | None = None, timeout: float = 30.0) -> Self:
        def build(ports: tuple[int, ...]) -> Launch:
            argv = [sys.executable, "-m", "streamkit.devtools.localstack.influxdb", "--port", str(ports[0])]
            env = {**os.environ, TOKEN_ENV: token}
            return Launch(cls.name, argv, ports, lambda: http_status(ports[0], "/health") == 200, env=env)

        return cls(spawn_on_ports(build, [port], timeout))

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def lines_written(self) -> int:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            conn.request("GET", "/health")
            return int(orjson.loads(conn.getresponse().read())["lines_written"])
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the InfluxDB write-endpoint stand-in, until SIGTERM")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--org", default="streamkit")
    parser.add_argument("--bucket", action="append", default=None)
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise SystemExit(f"set {TOKEN_ENV}")
    server = InfluxStandIn(token, org=args.org, buckets=tuple(args.bucket or ["metrics"]), keep_points=False)
    server.port = args.port
    ready = threading.Event()
    failed: list[BaseException] = []
    server._serve(ready, failed)  # blocks; SIGTERM ends the process
    if failed:
        raise SystemExit(f"cannot listen on {LOOPBACK}:{args.port}: {failed[0]}")


if __name__ == "__main__":
    main()


__all__ = ["InfluxStandIn", "InfluxStandInProcess", "Point", "WriteRequest", "type_name"]
