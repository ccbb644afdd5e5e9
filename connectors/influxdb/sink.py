"""``influxdb``: line protocol over HTTP to Timestream for InfluxDB (or any InfluxDB 3 / 2.x server).

- Records become lines (:mod:`.mapping`); a record that cannot goes to the dead-letter queue with the
  reason before anything is sent.
- Requests hold at most ``max_records`` lines and ``max_bytes`` of line protocol, gzip-compressed
  (ISA-L) with ``Content-Encoding: gzip``; buffers are written on count, size or age (``BufferedSink``).
- 429 and 503 are retried after the ``Retry-After`` the server sent (capped by ``max_retry_after_s``) plus
  the retry policy's jittered back-off; 500/502/504, timeouts and dropped connections are retried with
  the back-off alone. Retries that run out raise SinkError: nothing of the request is acknowledged, a
  restart replays it.
- Refused lines go to the dead-letter queue with the server's reason, mapped line by line
  (:mod:`.responses`); only lines the server confirmed are acknowledged. Answers that do not say which
  line is bad (v2's 422, a 413, a 400 without line numbers) are narrowed down by halving the request.
- 401 re-reads a token from Secrets Manager once (it may have been rotated); 401, 403, 404, 405 and
  redirects (never followed: they could carry the token elsewhere) then stop the pipeline (SinkError):
  a wrong token, database, bucket or URL is a deployment problem, not bad data, and dead-lettering
  every record for it would be wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import numpy as np
import structlog
from isal import igzip

from streamkit.batch import RecordBatch, chunk_bounds
from streamkit.config import PositiveInt, PositiveSeconds, Size
from streamkit.connectors.influxdb.mapping import UNIT_PRECISION, FieldOptions, LineMapping, Precision, TagOptions
from streamkit.connectors.influxdb.responses import FirstBad, Partial, Unclear, Written, interpret, short
from streamkit.connectors.influxdb.token import Token, TokenSource
from streamkit.connectors.timestream.mapping import TimeOptions
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.retry import retry
from streamkit.sink import BufferedSink, BufferOptions, Rejection

log = structlog.get_logger("streamkit.connectors.influxdb")

V3_PRECISION = {"s": "second", "ms": "millisecond", "us": "microsecond", "ns": "nanosecond"}
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
THROTTLE_STATUSES = frozenset({429, 503})
STOP_STATUSES = frozenset({401, 403, 404, 405})
UNCLEAR_PROBE_LIMIT = 8
"""Lines refused one by one, with answers naming no line and nothing written meanwhile: the request is at fault."""
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class InfluxDBOptions(BufferOptions, kw_only=True, forbid_unknown_fields=True):
    url: str
    """The instance endpoint, e.g. ``https://ID-ACCOUNT.timestream-influxdb.us-east-1.on.aws:8086``."""
    api: Literal["v3", "v2"] = "v3"
    """v3: ``/api/v3/write_lp`` (InfluxDB 3); v2: ``/api/v2/write`` (InfluxDB 2.x, Timestream for InfluxDB v2)."""
    database: str | None = None
    """v3: the database (``db``)."""
    org: str | None = None
    """v2: the organization."""
    bucket: str | None = None
    """v2: the bucket."""
    measurement: str
    """The measurement (table) of every line, unless ``measurement_field`` names one in the record."""
    measurement_field: str | None = None
    fields: list[str | FieldOptions]
    tags: list[str | TagOptions] = []
    time: TimeOptions = TimeOptions()
    precision: Precision | None = None
    """Timestamp precision sent; default: the unit of ``time.field``, else milliseconds."""
    accept_partial: bool = True
    """v3: write the valid lines of a request even when others are refused."""
    no_sync: bool = False
    """v3: acknowledge before the WAL is persisted (faster, may lose the last second on a crash)."""
    gzip: bool = True
    token_secret: str | None = None
    """Secrets Manager secret ARN or name holding the token (bare, or JSON under ``token_secret_key``)."""
    token_secret_key: str = "token"
    token_env: str | None = None
    """Environment variable holding the token (instead of ``token_secret``)."""
    max_records: PositiveInt = 5000
    max_bytes: Size = Size(4 * 1024**2)
    """Line-protocol bytes per request, before compression."""
    max_retry_after_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0
    """The longest ``Retry-After`` honoured; a longer one is cut to this."""
    connect_timeout_s: PositiveSeconds = 5.0
    request_timeout_s: PositiveSeconds = 30.0
    allow_plain_http: bool = False
    """Send the token over ``http://`` to a host other than loopback (it travels in clear text)."""


class Transient(Exception):
    """An answer worth repeating the request for (429, 5xx, a dropped connection)."""

    def __init__(self, status: int, text: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {text}" if status else text)
        self.status = status
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date (RFC 9110); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class InfluxDBSink(BufferedSink):
    """Writes records as line protocol to an InfluxDB write endpoint."""

    Options = InfluxDBOptions

    def __init__(self, options: InfluxDBOptions, env: PluginEnv) -> None:
        super().__init__(options)
        self.where = where = env.where or "sink"
        if options.max_records < 1:
            raise ConfigError(f"{where}.max_records", f"expected at least 1, got {options.max_records}")
        self.options = options
        self.endpoint, self.params = self._endpoint(options, where)
        precision = options.precision or (UNIT_PRECISION[options.time.unit] if options.time.field else "ms")
        self.mapping = LineMapping(
            measurement=options.measurement,
            measurement_field=options.measurement_field,
            tags=options.tags,
            fields=options.fields,
            time=options.time,
            precision=precision,
            where=where,
        )
        self.params["precision"] = V3_PRECISION[precision] if options.api == "v3" else precision
        self.tokens = TokenSource(
            secret=options.token_secret,
            secret_key=options.token_secret_key,
            env=options.token_env,
            aws=env.aws,
            where=where,
        )
        self.retry = options.retry
        self._token: Token | None = None
        self._session: Any = None
        # Counters for logs, tests and the benchmark.
        self.requests = 0
        self.lines_written = 0
        self.retries = 0

    @staticmethod
    def _endpoint(options: InfluxDBOptions, where: str) -> tuple[str, dict[str, str]]:
        parts = urlsplit(options.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}.url", f"expected an http(s) URL with a host, got {options.url!r}")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS and not options.allow_plain_http:
            raise ConfigError(
                f"{where}.url",
                "plain http would send the token in clear text; use https (or set allow_plain_http: true)",
            )
        base = options.url.rstrip("/")
        if options.api == "v3":
            if not options.database:
                raise ConfigError(f"{where}.database", "api v3 writes to a database: set database")
            params = {"db": options.database}
            if not options.accept_partial:
                params["accept_partial"] = "false"
            if options.no_sync:
                params["no_sync"] = "true"
            return f"{base}/api/v3/write_lp", params
        if not options.org or not options.bucket:
            raise ConfigError(f"{where}.bucket", "api v2 writes to an org's bucket: set org and bucket")
        return f"{base}/api/v2/write", {"org": options.org, "bucket": options.bucket}

    @property
    def target(self) -> str:
        o = self.options
        where = f"database {o.database!r}" if o.api == "v3" else f"bucket {o.org}/{o.bucket}"
        return f"InfluxDB {where} at {self.endpoint}"

    def __repr__(self) -> str:
        return f"<InfluxDBSink {self.name} -> {self.target}>"

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        import aiohttp

        self._token = await self.tokens.load()
        timeout = aiohttp.ClientTimeout(
            total=self.options.request_timeout_s, sock_connect=self.options.connect_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=max(2, 2 * self.options.max_concurrent_writes))
        # trust_env=False: no proxy from the environment sees the token (or a loopback test request).
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False)
        log.info("influxdb sink ready", sink=self.name, target=self.target, token=self.tokens.describe)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- writing ---------------------------------------------------------------------------------
    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        rejections: list[Rejection] = []
        lines: list[bytes] = []
        indices: list[int] = []
        offset = 0
        for batch in batches:
            mapped, failures = self.mapping.map_batch(batch)
            rejections.extend(Rejection(offset + i, reason, attempts=0) for i, reason in failures)
            for i, line in enumerate(mapped):
                if line is not None:
                    lines.append(line)
                    indices.append(offset + i)
            offset += len(batch)
        sizes = np.fromiter((len(line) for line in lines), dtype=np.int64, count=len(lines))
        for start, end in chunk_bounds(sizes, self.options.max_records, int(self.options.max_bytes), overhead=1):
            rejections.extend(await self._deliver(lines[start:end], indices[start:end]))
        return rejections

    async def _deliver(self, lines: list[bytes], indices: list[int]) -> list[Rejection]:
        """Send ``lines`` until each is written or refused for good; return the refused ones."""
        rejected: list[Rejection] = []
        parts: deque[list[int]] = deque([list(range(len(lines)))])
        specific = False  # an answer that depended on the data (something written, or a line named)
        unclear_singles = 0
        while parts:
            # Breadth first: when halving, every half of one level is tried before any is halved again,
            # so a request-level fault shows up as "nothing ever written" before many lines are probed.
            part = parts.popleft()
            status, body, attempts = await self._post([lines[p] for p in part])
            outcome = interpret(status, body, [lines[p] for p in part])
            if isinstance(outcome, Written):
                specific = True
                self.lines_written += len(part)
            elif isinstance(outcome, Partial):
                specific = True
                for number, reason in sorted(outcome.refused.items()):
                    rejected.append(
                        Rejection(indices[part[number - 1]], f"InfluxDB refused the line: {reason}", attempts)
                    )
                rest = [p for n, p in enumerate(part, start=1) if n not in outcome.refused]
                if outcome.complete:
                    self.lines_written += len(rest)
                elif rest:
                    parts.append(rest)  # the report may be cut short: send the unlisted lines again
                log.warning("influxdb refused lines", target=self.target, refused=len(outcome.refused), sent=len(part))
            elif isinstance(outcome, FirstBad):
                specific = True
                bad = part[outcome.line - 1]
                rejected.append(Rejection(indices[bad], f"InfluxDB refused the line: {outcome.reason}", attempts))
                rest = [p for p in part if p != bad]
                if rest:
                    parts.append(rest)  # nothing of the request was written: the other lines go again
            elif len(part) > 1:
                parts.extend((part[: len(part) // 2], part[len(part) // 2 :]))
            else:
                unclear_singles += 1
                if not specific and len(lines) > 1 and unclear_singles >= min(UNCLEAR_PROBE_LIMIT, len(lines)):
                    raise SinkError(
                        f"{self.target} refused each of {unclear_singles} lines sent alone ({outcome.reason}) and "
                        "wrote nothing: the request, not the data, is wrong; stopping without acknowledging"
                    )
                assert isinstance(outcome, Unclear)
                rejected.append(Rejection(indices[part[0]], f"InfluxDB refused the line: {outcome.reason}", attempts))
        return rejected

    # -- one request -----------------------------------------------------------------------------
    async def _post(self, lines: list[bytes]) -> tuple[int, bytes, int]:
        """POST the lines, retrying transient answers; returns (status, body, attempts) of the final answer."""
        payload = b"\n".join(lines) + b"\n"
        if self.options.gzip:
            payload = igzip.compress(payload, compresslevel=1)
        attempts = 0
        pause = 0.0
        refreshed = False

        async def once() -> tuple[int, bytes]:
            nonlocal attempts, pause
            if pause > 0:
                await asyncio.sleep(pause)  # the server's Retry-After; the policy's back-off comes on top
                pause = 0.0
            attempts += 1
            status, body, headers = await self._send(payload)
            if status in RETRY_STATUSES:
                raise Transient(status, short(body) or "no body", retry_after_seconds(headers.get("Retry-After")))
            return status, body

        def on_retry(exc: BaseException, attempt: int) -> None:
            nonlocal pause
            self.retries += 1
            throttled = isinstance(exc, Transient) and exc.status in THROTTLE_STATUSES
            self.record_retry(throttled=throttled)
            if isinstance(exc, Transient) and exc.retry_after is not None:
                pause = min(exc.retry_after, self.options.max_retry_after_s)
            log.info("influxdb write failed, retrying", target=self.target, error=str(exc), attempt=attempt)

        while True:
            try:
                status, body = await retry(once, lambda e: isinstance(e, Transient), self.retry, on_retry)
            except Transient as exc:
                raise SinkError(
                    f"{self.target}: still {exc} after {attempts} attempts; nothing of these {len(lines)} lines "
                    "is acknowledged, a restart replays them",
                    retryable=True,
                ) from None
            if status == 401 and self.tokens.rotatable and not refreshed:
                refreshed = True
                await self._refresh_token()
                continue
            if status in STOP_STATUSES or 300 <= status < 400:
                raise SinkError(f"{self.target}: {self._stop_reason(status, body)}; stopping without acknowledging")
            return status, body, attempts

    async def _send(self, payload: bytes) -> tuple[int, bytes, Mapping[str, str]]:
        import aiohttp

        if self._session is None or self._token is None:
            raise SinkError(f"{self.target}: the sink is not started")
        self.requests += 1
        scheme = "Bearer" if self.options.api == "v3" else "Token"
        headers = {
            "Authorization": f"{scheme} {self._token.reveal()}",
            "Content-Type": "text/plain; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": "streamkit",
        }
        if self.options.gzip:
            headers["Content-Encoding"] = "gzip"
        try:
            # No redirects: a redirect could carry the token to another host; the url should name the endpoint.
            async with self._session.post(
                self.endpoint, params=self.params, data=payload, headers=headers, allow_redirects=False
            ) as answer:
                return answer.status, await answer.read(), answer.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Only the type and its own text: aiohttp's request_info would carry the headers (the token).
            raise Transient(0, f"{type(exc).__name__}: {exc}") from None

    async def _refresh_token(self) -> None:
        log.warning("influxdb answered 401; reading the token again", target=self.target, token=self.tokens.describe)
        try:
            self._token = await self.tokens.load()
        except ConfigError as exc:
            raise SinkError(f"{self.target}: 401 and the token cannot be read again: {exc}") from None

    def _stop_reason(self, status: int, body: bytes) -> str:
        text = short(body) or "no body"
        if status in (401, 403):
            return f"HTTP {status} ({text}): the token from {self.tokens.describe} is not allowed to write here"
        if status == 404:
            return (
                f"HTTP 404 ({text}): check url, api and the {'database' if self.options.api == 'v3' else 'org/bucket'}"
            )
        if 300 <= status < 400:
            return (
                f"HTTP {status} redirect ({text}): set url to the instance endpoint itself (redirects are not followed)"
            )
        return f"HTTP {status} ({text}): check url and api"
