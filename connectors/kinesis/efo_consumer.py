"""Register the enhanced fan-out consumer a source subscribes with, and wait until it is ACTIVE.

Every worker of an application runs this at start-up, so it must be safe when many do it at once: describe
first (the consumer usually exists already, and DescribeStreamConsumer allows 20 calls/s per stream against
RegisterStreamConsumer's 5), register only when it is missing, and treat the answers of a race as
"someone else is on it": ResourceInUseException (another worker registered it a moment ago, or it is being
deleted) and LimitExceededException (too many control-plane calls) back off with jitter and describe again.
A stream already holding its 20 consumers also answers LimitExceededException; that one never clears, so
after ``timeout_s`` start-up fails with a message that says so.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import structlog
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from streamkit.connectors.aws_clients import KINESIS_TRANSIENT_CODES, is_transient
from streamkit.retry import RetryPolicy

log = structlog.get_logger("streamkit.kinesis")

# The answers of a race (see the module docstring), waited out like throttling.
_RACE_CODES = KINESIS_TRANSIENT_CODES | {"ResourceInUseException"}
# Back-off for the control-plane calls: a fleet starting at once spreads its describes over a few seconds.
REGISTRATION_RETRY = RetryPolicy(max_attempts=0, base_delay_s=0.5, max_delay_s=5.0)
# How often a CREATING consumer is described again (jittered), within the 20 calls/s per stream.
ACTIVE_POLL_S = 1.0
# At most 5 consumers of an account may be CREATING at once: a 6th registration is refused with
# LimitExceededException. A worker registering several streams' consumers keeps to it by itself.
CREATING_PER_ACCOUNT = 5


class ConsumerRegistrationError(Exception):
    """The consumer could not be registered or did not become ACTIVE in time."""


def _code(exc: ClientError) -> str:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code


async def ensure_consumer(
    client: Any,
    stream_arn: str,
    name: str,
    *,
    timeout_s: float,
    retry: RetryPolicy = REGISTRATION_RETRY,
    poll_s: float = ACTIVE_POLL_S,
    consumer_arn: str | None = None,
) -> str:
    """The ARN of the ACTIVE consumer ``name`` of the stream, registering it if it does not exist.

    ``consumer_arn``: a consumer registered by someone else (infrastructure code, as the KCL's per-stream
    ``consumerArn``): it is only described until ACTIVE, never registered, and its absence is an error."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    last = "not described yet"
    while True:
        delay = poll_s * random.uniform(0.5, 1.5)
        try:
            description = await _describe(client, stream_arn, name, consumer_arn)
            if description is None and consumer_arn is not None:
                raise ConsumerRegistrationError(
                    f"consumer {consumer_arn} is not registered: register it, or leave consumer_arn out so that "
                    f"the worker registers {name!r}"
                )
            if description is None:
                await client.register_stream_consumer(StreamARN=stream_arn, ConsumerName=name)
                log.info("enhanced fan-out consumer registered", consumer=name, stream=stream_arn)
                last = "registered, CREATING"
            else:
                status = description["ConsumerStatus"]
                if status == "ACTIVE":
                    arn: str = description["ConsumerARN"]
                    return arn
                last = status  # CREATING: wait; DELETING: wait, then it is gone and we register again
            attempt = 0
        except ClientError as exc:
            code = _code(exc)
            if not is_transient(exc, _RACE_CODES):
                raise ConsumerRegistrationError(f"consumer {name!r} of {stream_arn}: {code or 'error'}: {exc}") from exc
            attempt += 1
            last = f"{code}: {exc}"
            delay = retry.delay(attempt)
            log.info("consumer registration refused; backing off", consumer=name, reason=code, delay_s=round(delay, 3))
        except (HTTPClientError, ConnectionError) as exc:
            attempt += 1
            last = f"{type(exc).__name__}: {exc}"
            delay = retry.delay(attempt)
        if time.monotonic() + delay > deadline:
            hint = ""
            if "LimitExceeded" in last:
                hint = " (a stream has at most 20 consumers: deregister unused ones, or reuse one by its name)"
            raise ConsumerRegistrationError(
                f"consumer {name!r} of {stream_arn} not ACTIVE after {timeout_s:g} s; last: {last}{hint}"
            )
        await asyncio.sleep(delay)


async def _describe(client: Any, stream_arn: str, name: str, consumer_arn: str | None) -> dict[str, Any] | None:
    by: dict[str, str] = (
        {"ConsumerARN": consumer_arn} if consumer_arn else {"StreamARN": stream_arn, "ConsumerName": name}
    )
    try:
        response = await client.describe_stream_consumer(**by)
    except ClientError as exc:
        if _code(exc) == "ResourceNotFoundException":
            return None
        raise
    description: dict[str, Any] = response["ConsumerDescription"]
    return description
