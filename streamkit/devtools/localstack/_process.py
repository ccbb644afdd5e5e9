"""Child-process plumbing shared by every local stand-in server.

Each server runs as a child process in its own session (so a Ctrl-C aimed at the test run does not reach
it half-way, and it never shares our event loop), logs to a file in its own temp dir, and is stopped by
signalling exactly the PID we started. An atexit hook stops whatever a crashed test left running; it only
ever touches processes that this module spawned.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

LOOPBACK = "127.0.0.1"

# How often start() polls a starting server. Small, because the fastest servers are ready in ~30 ms.
_POLL_INTERVAL_S = 0.02
# A port picked by free_port() can be taken by someone else before the server binds it; a server that
# dies complaining about that is retried on fresh ports this many times in all.
_PORT_ATTEMPTS = 3
_PORT_IN_USE_MARKERS = ("eaddrinuse", "address already in use", "address in use")
KEEP_LOGS_ENV = "STREAMKIT_KEEP_LOGS"


class LocalStackError(RuntimeError):
    """A local stand-in server could not be found, started or used."""


class ServerStartError(LocalStackError):
    """A server exited or did not become ready in time. The message names its log file and shows its tail."""


# --- ports -----------------------------------------------------------------------------------------------

_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that this process has not handed out before.

    Remembering handed-out ports keeps servers started in parallel threads from being given the same port
    while none of them has bound it yet. Another process can still take the port first; start() retries.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        with _ports_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise LocalStackError("could not find a free TCP port on 127.0.0.1")


# --- readiness probes ------------------------------------------------------------------------------------


def http_status(port: int, path: str, method: str = "GET", timeout: float = 1.0) -> int | None:
    """The HTTP status of one request to 127.0.0.1:port, or None if nothing answers yet.

    http.client talks to the address directly; urllib would honour HTTP(S)_PROXY and could route a
    loopback probe through a proxy.
    """
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def tcp_accepts(port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to 127.0.0.1:port succeeds."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- the atexit safety net -------------------------------------------------------------------------------

_live: dict[int, subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()


def _track(process: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live[process.pid] = process


def _untrack(process: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live.pop(process.pid, None)


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM this one PID, wait, then SIGKILL it. Never signals a group, never looks up names.

    Popen.send_signal() checks that the child has not been reaped yet, so a recycled PID is never hit.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
    _untrack(process)


@atexit.register
def _stop_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live.values())
    for process in leftovers:
        terminate(process, timeout=2.0)


# --- launching -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """How to run one server: its command, environment, and the probe that says it is ready."""

    name: str
    argv: Sequence[str]
    ports: tuple[int, ...]
    ready: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None


@dataclass(frozen=True)
class Running:
    process: subprocess.Popen[bytes]
    ports: tuple[int, ...]
    log_path: Path
    started_in: float


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _spawn(launch: Launch, timeout: float) -> Running:
    slug = launch.name.lower().replace(" ", "-")
    log_dir = Path(tempfile.mkdtemp(prefix=f"streamkit-{slug}-"))
    log_path = log_dir / f"{slug}.log"
    began = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen(
                list(launch.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"NO_COLOR": "1", **launch.env},  # keep ANSI colour codes out of the log file
                cwd=launch.cwd or log_dir,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerStartError(f"{launch.name}: could not run {launch.argv[0]!r}: {exc}") from exc
    _track(process)
    where = f"{LOOPBACK}:{launch.ports[0]}"
    deadline = began + timeout
    while True:
        code = process.poll()
        if code is not None:
            _untrack(process)
            raise ServerStartError(
                f"{launch.name} exited with code {code} before it was ready on {where} "
                f"(pid {process.pid}); log: {log_path}\n--- log tail ---\n{log_tail(log_path)}"
            )
        if launch.ready():
            return Running(process, launch.ports, log_path, time.monotonic() - began)
        if time.monotonic() > deadline:
            terminate(process, timeout=2.0)
            raise ServerStartError(
                f"{launch.name} was not ready on {where} within {timeout:.1f} s (pid {process.pid}, "
                f"now stopped); log: {log_path}\n--- log tail ---\n{log_tail(log_path)}"
            )
        time.sleep(_POLL_INTERVAL_S)


def spawn_on_ports(build: Callable[[tuple[int, ...]], Launch], ports: Sequence[int | None], timeout: float) -> Running:
    """Start the server that build() describes, on the given ports (None = pick a free one).

    When a port we picked turns out to be taken by the time the server binds it, try again on fresh ports.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        chosen = tuple(p if p is not None else free_port() for p in ports)
        try:
            return _spawn(build(chosen), timeout)
        except ServerStartError as exc:
            picked_by_us = any(p is None for p in ports)
            port_clash = any(marker in str(exc).lower() for marker in _PORT_IN_USE_MARKERS)
            if not (picked_by_us and port_clash) or attempt == _PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# --- the common server object ----------------------------------------------------------------------------


class StopsOnExit(ABC):
    """``with server:`` stops the server (or stack) at the end of the block, whatever happened in it."""

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalServer(StopsOnExit):
    """A running stand-in server: a child process we started, listening on 127.0.0.1 only."""

    name: ClassVar[str] = "server"

    def __init__(self, running: Running) -> None:
        self._running = running

    @property
    def pid(self) -> int:
        return self._running.process.pid

    @property
    def port(self) -> int:
        return self._running.ports[0]

    @property
    def log_path(self) -> Path:
        """The file that has the server's stdout and stderr."""
        return self._running.log_path

    @property
    def startup_seconds(self) -> float:
        """Wall time from spawning the process to its first successful readiness probe."""
        return self._running.started_in

    def is_running(self) -> bool:
        return self._running.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM its PID, wait, then SIGKILL it. Idempotent.

        The log dir is removed unless STREAMKIT_KEEP_LOGS=1 is set.
        """
        terminate(self._running.process, timeout)
        if os.environ.get(KEEP_LOGS_ENV, "") not in ("1", "true", "yes"):
            shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<{type(self).__name__} pid={self.pid} port={self.port} {state} log={self.log_path}>"
