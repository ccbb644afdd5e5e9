"""What every long-running command shares: stop on SIGTERM/SIGINT, a progress line, and the errors a task
group raised. The CLI, the demo and the benchmark runner use these; none of them imports another."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import structlog


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The individual errors inside (possibly nested) exception groups from task groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def install_stop_signals(stop: asyncio.Event, log: structlog.typing.FilteringBoundLogger) -> None:
    """SIGTERM and SIGINT set ``stop``: the runtime then drains, checkpoints and returns."""
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        log.info("stop requested: draining in-flight records", signal=signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig.name)


async def report_progress(runtime: object, interval: float) -> None:
    """Print the runtime's progress line to stderr every ``interval`` seconds until cancelled."""
    metrics = runtime.metrics  # type: ignore[attr-defined]
    while True:
        await asyncio.sleep(interval)
        print(f"progress: {metrics.progress_line()}", file=sys.stderr, flush=True)
