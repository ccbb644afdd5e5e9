"""The ``source`` section of ``type: kafka`` and the librdkafka configuration built from it.

Settings that the at-least-once guarantee depends on are not negotiable: offsets are committed by
streamkit after every sink acknowledged (never auto-committed, never auto-stored), and the group uses
cooperative-sticky assignment so a rebalance only stops the partitions that move. Anything else librdkafka
offers can be passed through ``librdkafka:``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from streamkit.config import NonNegativeSeconds, PositiveInt, PositiveSeconds, Size
from streamkit.errors import ConfigError

from .auth import AuthOptions, librdkafka_auth

LibrdkafkaValue = str | int | float | bool


class KafkaOptions(msgspec.Struct, forbid_unknown_fields=True):
    """``source: {type: kafka, ...}``."""

    bootstrap_servers: str | list[str]
    """``host:port`` list (MSK: the bootstrap brokers string for the chosen auth, e.g. port 9098 for IAM)."""
    topics: str | list[str]
    """Topic names; an entry starting with ``^`` is a regular expression (new matching topics join)."""
    group_id: str
    """The consumer group: its committed offsets are this pipeline's checkpoints."""
    start: Literal["earliest", "latest"] = "earliest"
    """Where a partition without a committed offset starts (a new group, a new partition)."""
    auth: AuthOptions = msgspec.field(default_factory=AuthOptions)
    client_id: str | None = None
    """Shown in broker logs and metrics; defaults to ``streamkit-<pipeline name>``."""
    batch_size: PositiveInt = 1000
    """The most records in one batch of a partition (what processors work on at a time). Around a thousand
    keeps a batch's decoded values in the CPU cache through the whole chain; 10,000 measured slower."""
    consume_batch: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    """Messages taken from librdkafka's queue per call (across partitions)."""
    poll_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.1
    """How long one fetch waits for messages; also how soon a checkpoint is committed after it is taken."""
    buffer: Size = Size(32 * 1024**2)
    """Bytes handed over by the consumer and not yet taken by the pipeline, all partitions together. Above
    it no more messages are taken from librdkafka's queue (itself bounded by ``queued.max.messages.kbytes``,
    64 MiB by default), so memory stays bounded when sinks are slow. A partition holding more than twice
    its fair share of it (a stuck partition) is paused at the broker until half of that is taken."""
    fetch_queue_backoff_ms: Annotated[int, msgspec.Meta(ge=0, le=300_000)] = 10
    """librdkafka's default (1000) stalls a partition for a second once its local queue is full: 10x
    slower on a fast pipeline (PERF_FACTS.md)."""
    session_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 45_000
    """A worker that stops heartbeating (crashed, SIGKILL) loses its partitions after this long."""
    max_poll_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=86_400_000)] = 300_000
    """The rebalance deadline: a revoked partition must be flushed and committed within it."""
    revoke_timeout_s: PositiveSeconds = 60.0
    """How long a rebalance waits for revoked partitions to drain to the sinks and commit; must be below
    max_poll_interval_ms. Past it the partitions are dropped uncommitted (their records are replayed)."""
    lag_interval_s: NonNegativeSeconds = 10.0
    """How often consumer lag is measured and logged (0 turns it off)."""
    tombstones: Literal["skip", "keep"] = "skip"
    """Records without a value (compaction deletes): skipped, or kept with an empty payload."""
    librdkafka: dict[str, LibrdkafkaValue] = msgspec.field(default_factory=dict)
    """Further consumer settings, passed through (for example ``fetch.max.bytes``, ``isolation.level``)."""


# Settings streamkit owns, and where to set them instead (None: not settable at all).
_RESERVED: dict[str, str | None] = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "group.id": "group_id",
    "client.id": "client_id",
    "auto.offset.reset": "start",
    "enable.auto.commit": None,
    "enable.auto.offset.store": None,
    "partition.assignment.strategy": None,
    "group.protocol": None,
    "session.timeout.ms": "session_timeout_ms",
    "max.poll.interval.ms": "max_poll_interval_ms",
    "fetch.queue.backoff.ms": "fetch_queue_backoff_ms",
    "security.protocol": "auth.mechanism",
    "sasl.mechanism": "auth.mechanism",
    "sasl.mechanisms": "auth.mechanism",
    "sasl.username": "auth.username",
    "sasl.password": "auth.password",
    "ssl.ca.location": "auth.ca_location",
    "ssl.certificate.location": "auth.certificate_location",
    "ssl.key.location": "auth.key_location",
    "ssl.key.password": "auth.key_password",
    "oauth_cb": "auth.mechanism",
    "on_commit": None,
    "error_cb": None,
}


def topic_list(options: KafkaOptions, where: str) -> list[str]:
    """The subscription: names and ``^`` patterns, each pattern checked as a regular expression."""
    topics = [options.topics] if isinstance(options.topics, str) else list(options.topics)
    if not topics:
        raise ConfigError(f"{where}.topics", "expected at least one topic name or ^pattern")
    for i, topic in enumerate(topics):
        at = f"{where}.topics" if isinstance(options.topics, str) else f"{where}.topics[{i}]"
        if not topic:
            raise ConfigError(at, "empty topic name")
        if topic.startswith("^"):
            try:
                re.compile(topic)
            except re.error as exc:
                raise ConfigError(at, f"invalid pattern {topic!r}: {exc}") from None
        elif not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic):
            raise ConfigError(at, f"{topic!r} is not a valid topic name (letters, digits, '.', '_', '-')")
    return topics


def check_options(options: KafkaOptions, where: str) -> None:
    """Combinations msgspec cannot check alone. Raises ConfigError naming the key."""
    servers = options.bootstrap_servers
    if not (servers if isinstance(servers, str) else ",".join(servers)).strip():
        raise ConfigError(f"{where}.bootstrap_servers", "expected host:port[,host:port...]")
    if not options.group_id.strip():
        raise ConfigError(f"{where}.group_id", "expected a consumer group name")
    if options.max_poll_interval_ms < options.session_timeout_ms:
        raise ConfigError(f"{where}.max_poll_interval_ms", "must be at least session_timeout_ms (Kafka rule)")
    if options.revoke_timeout_s * 1000 >= options.max_poll_interval_ms:
        raise ConfigError(
            f"{where}.revoke_timeout_s",
            f"must be below max_poll_interval_ms ({options.max_poll_interval_ms} ms): the rebalance does not "
            "wait longer for this worker",
        )
    for key in options.librdkafka:
        if key in _RESERVED:
            instead = _RESERVED[key]
            hint = f"set source.{instead} instead" if instead else "streamkit manages it (at-least-once commits)"
            raise ConfigError(f"{where}.librdkafka.{key}", hint)


def consumer_config(options: KafkaOptions, auth: AuthOptions, client_id: str) -> dict[str, Any]:
    """The complete librdkafka consumer configuration."""
    servers = options.bootstrap_servers
    config: dict[str, Any] = {
        "bootstrap.servers": servers if isinstance(servers, str) else ",".join(servers),
        "group.id": options.group_id,
        "client.id": client_id,
        "auto.offset.reset": options.start,
        # streamkit commits what every sink acknowledged; librdkafka must neither commit nor store offsets.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": options.session_timeout_ms,
        "max.poll.interval.ms": options.max_poll_interval_ms,
        "fetch.queue.backoff.ms": options.fetch_queue_backoff_ms,
    }
    config.update(librdkafka_auth(auth))
    config.update(options.librdkafka)
    return config


def is_loopback(servers: str | list[str]) -> bool:
    hosts = [s.strip().rsplit(":", 1)[0] for s in (servers.split(",") if isinstance(servers, str) else servers)]
    return all(h in ("127.0.0.1", "localhost", "::1", "[::1]") for h in hosts if h)
