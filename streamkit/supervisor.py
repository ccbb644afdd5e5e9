"""``streamkit run --processes N``: N worker processes on one host, one supervisor in front of them.

Python runs one core per process, so a host with N cores runs N workers. Each child is an ordinary
``streamkit run`` of the same pipeline file: Kinesis children take leases and Kafka children join the consumer
group independently, exactly as N tasks would; generator and file sources split partitions by process index
(:mod:`streamkit.share`). The supervisor

- validates the pipeline once before starting anything (a bad file is exit 2, no child started);
- forwards SIGTERM/SIGINT to every child and waits for their drain (``runtime.shutdown_grace_s`` plus a
  margin) before killing what is left;
- restarts a child that crashed, with backoff, so one poison process does not stop the host; a child that
  exits 2 (configuration) stops all, since every restart would fail the same way; a child that exits 0
  (a finite source read to its end) is not restarted;
- serves the one health endpoint of the host (``runtime.health_port``), answering from its children's
  endpoints, which listen on loopback, and merges their Prometheus metrics with a ``process`` label.

Children also watch the supervisor's PID: if it dies (SIGKILL), they stop themselves, drain and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from streamkit.config import RuntimeSettings
from streamkit.health import HealthServer
from streamkit.share import PROCESS_COUNT_ENV, PROCESS_INDEX_ENV

log = structlog.get_logger("streamkit.supervisor")

SUPERVISOR_PID_ENV = "STREAMKIT_SUPERVISOR_PID"
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# Crash-restart backoff: 1 s doubling to 30 s; a child that ran this long since its start resets it.
RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S, STABLE_AFTER_S = 1.0, 30.0, 60.0
# How much longer than the children's own grace period the supervisor waits before SIGKILL.
KILL_MARGIN_S = 5.0
POLL_INTERVAL_S = 1.0


def resolve_processes(value: int | str) -> int:
    """``auto`` is the number of CPUs this process may run on."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    return int(value)


def loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    index: int
    health_port: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    backoff_s: float = RESTART_BACKOFF_S
    finished: int | None = None
    """The exit code once the child is done for good (not restarted)."""
    ready: tuple[bool, str] = (False, "starting")
    metrics: str = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


@dataclass
class Supervisor:
    pipeline: Path
    processes: int
    settings: RuntimeSettings
    child_args: Sequence[str] = ()
    """Arguments every child gets after ``run PIPELINE`` (the user's ``--set`` overrides)."""
    global_args: Sequence[str] = ()
    """Arguments before ``run`` (log format and level)."""
    children: list[Child] = field(default_factory=list)
    _stopping: bool = False

    def argv(self, child: Child) -> list[str]:
        return [
            sys.executable,
            "-m",
            "streamkit",
            *self.global_args,
            "run",
            str(self.pipeline),
            "--processes",
            "1",
            "--no-progress",
            *self.child_args,
            "--set",
            "runtime.health_host=127.0.0.1",
            "--set",
            f"runtime.health_port={child.health_port}",
        ]

    async def _spawn(self, child: Child) -> None:
        env = {
            **os.environ,
            PROCESS_INDEX_ENV: str(child.index),
            PROCESS_COUNT_ENV: str(self.processes),
            SUPERVISOR_PID_ENV: str(os.getpid()),
        }
        child.process = await asyncio.create_subprocess_exec(*self.argv(child), env=env)
        child.started = time.monotonic()
        child.ready = (False, "starting")
        log.info("worker process started", process=child.index, pid=child.pid, restarts=child.restarts)

    async def run(self, stop: asyncio.Event) -> int:
        self.children = [Child(i, loopback_port()) for i in range(self.processes)]
        health = None
        if self.settings.health_port is not None:
            health = HealthServer(
                self.settings.health_host,
                self.settings.health_port,
                live=self.live,
                ready=self.ready,
                metrics=self.merged_metrics if self.settings.metrics.prometheus else None,
            )
            await health.start()
        try:
            for child in self.children:
                await self._spawn(child)
            async with asyncio.TaskGroup() as group:
                watchers = [group.create_task(self._watch(child, stop)) for child in self.children]
                poller = group.create_task(self._poll_children())
                stopper = group.create_task(self._forward_stop(stop))
                await asyncio.wait(watchers)
                poller.cancel()
                stopper.cancel()
        finally:
            if health is not None:
                await health.stop()
        codes = [child.finished for child in self.children]
        if any(code == EXIT_CONFIG for code in codes):
            return EXIT_CONFIG
        return EXIT_OK if all(code == EXIT_OK for code in codes) else EXIT_FAILED

    async def _watch(self, child: Child, stop: asyncio.Event) -> None:
        """Wait for the child; restart it after a crash unless the host is stopping."""
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping or stop.is_set():
                child.finished = code if code != -signal.SIGTERM else EXIT_OK
                log.info("worker process stopped", process=child.index, pid=child.pid, exit_code=code)
                return
            if code == EXIT_OK:
                child.finished = EXIT_OK
                log.info("worker process finished", process=child.index, pid=child.pid)
                return
            if code == EXIT_CONFIG:
                child.finished = EXIT_CONFIG
                log.error("worker process rejected its configuration: stopping all", process=child.index)
                stop.set()
                return
            if time.monotonic() - child.started >= STABLE_AFTER_S:
                child.backoff_s = RESTART_BACKOFF_S
            log.error(
                "worker process crashed: restarting",
                process=child.index,
                pid=child.pid,
                exit_code=code,
                restart_in_s=child.backoff_s,
            )
            child.ready = (False, f"crashed with exit code {code}; restarting")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(child.backoff_s):
                    await stop.wait()
            if stop.is_set():
                child.finished = code
                return
            child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
            child.restarts += 1
            await self._spawn(child)

    async def _forward_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping = True
        running = [c for c in self.children if c.process is not None and c.process.returncode is None]
        log.info("stop requested: forwarding SIGTERM to worker processes", processes=[c.pid for c in running])
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = self.settings.shutdown_grace_s + KILL_MARGIN_S
        try:
            async with asyncio.timeout(deadline):
                for child in running:
                    assert child.process is not None
                    await child.process.wait()
        except TimeoutError:
            for child in running:
                if child.process is not None and child.process.returncode is None:
                    log.error("worker process did not stop in time: killing", process=child.index, pid=child.pid)
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()

    # -- health and metrics ----------------------------------------------------------------------
    def live(self) -> tuple[bool, str]:
        running = sum(1 for c in self.children if c.process is not None and c.process.returncode is None)
        return True, f"{running} of {self.processes} worker process(es) running"

    def ready(self) -> tuple[bool, str]:
        states = [c.ready for c in self.children if c.finished is None]
        reasons = "; ".join(f"process {c.index}: {c.ready[1]}" for c in self.children if c.finished is None)
        # Ready once every running child is up and at least one holds a partition: with fewer partitions
        # than processes, some children rightly hold none.
        up = all(ok or "holds no partition" in why for ok, why in states)
        return (bool(states) and up and any(ok for ok, _ in states)), reasons or "no worker process running"

    def merged_metrics(self) -> str:
        return merge_prometheus([(str(c.index), c.metrics) for c in self.children if c.metrics])

    async def _poll_children(self) -> None:
        while True:
            for child in self.children:
                if child.process is None or child.process.returncode is not None:
                    continue
                status, body = await http_get(child.health_port, "/health/ready")
                if status is not None:
                    child.ready = (status == 200, _reason(body))
                if self.settings.metrics.prometheus:
                    status, body = await http_get(child.health_port, "/metrics")
                    if status == 200:
                        child.metrics = body
            await asyncio.sleep(POLL_INTERVAL_S)


def _reason(body: str) -> str:
    import orjson

    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.strip()[:200]
    return str(parsed.get("reason", parsed)) if isinstance(parsed, dict) else str(parsed)


async def http_get(port: int, path: str) -> tuple[int | None, str]:
    """A GET to a child's health endpoint on loopback: (status, body), or (None, why) if it did not answer."""
    try:
        async with asyncio.timeout(POLL_INTERVAL_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return None, f"not answering ({exc.__class__.__name__})"
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    try:
        status = int(status_line[1])
    except (IndexError, ValueError):
        return None, "not an HTTP answer"
    return status, body.decode("utf-8", "replace")


def merge_prometheus(texts: Sequence[tuple[str, str]]) -> str:
    """Merge children's Prometheus text expositions into one, each sample labelled ``process="i"``.

    The format wants every sample of a metric family in one group after its HELP and TYPE lines, so samples
    are gathered per family across children rather than concatenated.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    for process, text in texts:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    meta, _ = families.setdefault(family, ([], []))
                    if line not in meta:
                        meta.append(line)
                continue
            _, samples = families.setdefault(family, ([], []))
            samples.append(_with_label(line, "process", process))
    out: list[str] = []
    for meta, samples in families.values():
        out.extend(meta)
        out.extend(samples)
    return "\n".join(out) + "\n" if out else ""


def _with_label(sample: str, name: str, value: str) -> str:
    label = f'{name}="{value}"'
    brace = sample.find("{")
    space = sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        inner = sample[brace + 1 :]
        return f"{sample[: brace + 1]}{label}{'' if inner.startswith('}') else ','}{inner}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


async def watch_supervisor(stop: asyncio.Event) -> None:
    """In a child: stop (drain, checkpoint, exit) if the supervisor that started it is gone."""
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if not expected:
        return
    while not stop.is_set():
        if str(os.getppid()) != expected:
            log.error("supervisor process is gone: stopping this worker process", supervisor_pid=expected)
            stop.set()
            return
        await asyncio.sleep(POLL_INTERVAL_S)
