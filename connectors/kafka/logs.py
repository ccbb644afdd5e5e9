"""librdkafka's errors and log lines as structured log events, without flooding the log.

During a broker outage librdkafka reports the same connection failure on every reconnect attempt; one
line per distinct message every 30 s says as much (with the number of repeats left out).
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Any

import structlog

log = structlog.get_logger("streamkit.kafka")

REPEAT_EVERY_S = 30.0


class Throttle:
    """Lets a message through once per ``every_s`` seconds per key; counts what it held back."""

    def __init__(self, every_s: float = REPEAT_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(let it through?, how many were held back since the last one let through)."""
        now = time.monotonic()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.every_s:
            self._last[key] = (last, held + 1)
            return False, held + 1
        self._last[key] = (now, 0)
        return True, held


class KafkaErrors:
    """librdkafka's ``error_cb``: logs errors (throttled) and remembers a fatal one for the consumer thread."""

    def __init__(self) -> None:
        self.fatal: Any = None
        self._throttle = Throttle()

    def __call__(self, error: Any) -> None:
        if error.fatal():
            self.fatal = error
            log.error("kafka fatal error", error=error.str(), code=error.name())
            return
        allowed, repeated = self._throttle.allow((error.code(), error.str()))
        if allowed:
            log.warning("kafka error", error=error.str(), code=error.name(), repeated=repeated)


class LibrdkafkaLog:
    """librdkafka's ``logger``: confluent-kafka calls ``log(level, "%s [%s] %s", facility, name, message)``
    with Python logging levels."""

    def __init__(self) -> None:
        self._throttle = Throttle()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        text = fmt % args if args else fmt
        allowed, repeated = self._throttle.allow(text)
        if not allowed:
            return
        if level >= 40:
            log.error("librdkafka", message=text, repeated=repeated)
        elif level >= 30:
            log.warning("librdkafka", message=text, repeated=repeated)
        elif level >= 20:
            log.info("librdkafka", message=text, repeated=repeated)
        else:
            log.debug("librdkafka", message=text, repeated=repeated)
