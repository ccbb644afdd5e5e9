"""A stalled DynamoDB fails a lease renewal within the lease client's read timeout instead of hanging it.

The lease table's client comes from the one factory (``AwsClient`` with ``lease_table_options``), as the
Kinesis source builds it. It reaches moto through a loopback TCP proxy (tests/tcp_proxy.py) that hangs
mid-test: connections stay open and nothing comes back, as when DynamoDB or the network path stalls. With
botocore's defaults (60 s read timeout, retried) a renewal waited about a minute, long after the lease
expired; now one attempt ends at the read timeout and the renewal as a whole within its retry budget.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError

from streamkit.config import AwsSettings
from streamkit.connectors.aws_clients import AwsClient, lease_table_options
from streamkit.connectors.dynamodb import (
    TRIM_HORIZON,
    Lease,
    LeaseCoordinator,
    LeaseTable,
    LeaseTableError,
    lease_retry,
)
from streamkit.devtools.localstack import MotoServer
from streamkit.retry import RetryPolicy
from tests.tcp_proxy import TcpProxy

FAILOVER_S = 3.0  # lease client: connect 0.3 s, read 0.6 s; retries start within 1 s
SLACK_S = 1.0  # a loaded (shared, 2-core) machine can stall the loop for a while
KEY = "shardId-000000000000"

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("aws_env")]


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[TcpProxy]:
    with TcpProxy.running(moto_server.endpoint_url) as running:
        yield running


@pytest.fixture
async def dynamodb(proxy: TcpProxy, aws_env: dict[str, str]) -> AsyncIterator[Any]:
    aws = AwsSettings(region=aws_env["AWS_REGION"], endpoints={"dynamodb": proxy.endpoint_url})
    async with AwsClient(aws, "dynamodb", lease_table_options(FAILOVER_S)) as client:
        yield client


def count_sends(dynamodb: Any, operation: str) -> list[int]:
    """Counts the HTTP requests of ``operation`` the client sends (its own retries included)."""
    sent = [0]

    def on_send(**_: Any) -> None:
        sent[0] += 1

    dynamodb.meta.events.register(f"before-send.dynamodb.{operation}", on_send)
    return sent


async def new_table(dynamodb: Any, retry: RetryPolicy) -> LeaseTable:
    """A fresh table holding one unowned lease."""
    table = LeaseTable(dynamodb, f"stall-{uuid.uuid4().hex[:8]}", retry=retry)
    await table.ensure_exists(poll_interval=0.05)
    assert await table.create_lease(Lease(KEY, checkpoint=TRIM_HORIZON))
    return table


async def held_lease(dynamodb: Any, retry: RetryPolicy) -> tuple[LeaseTable, Lease]:
    table = await new_table(dynamodb, retry)
    [free] = await table.list_leases()
    return table, await table.take(free, "w")


async def test_one_attempt_on_a_stalled_table_ends_at_the_read_timeout(dynamodb: Any, proxy: TcpProxy) -> None:
    read_timeout = lease_table_options(FAILOVER_S).read_timeout_s
    table, lease = await held_lease(dynamodb, RetryPolicy(max_attempts=1))
    lease = await table.renew(lease, "w")  # flowing: renewals answer

    sends = count_sends(dynamodb, "UpdateItem")
    proxy.hang()
    started = time.monotonic()
    with pytest.raises(LeaseTableError) as raised:
        await table.renew(lease, "w")
    took = time.monotonic() - started
    print(f"\nrenewal on a stalled table failed after {took:.2f} s (read timeout {read_timeout} s)")

    assert isinstance(raised.value.__cause__, ReadTimeoutError), repr(raised.value.__cause__)
    assert raised.value.retryable, "a stall is worth retrying at the next renewal pass"
    assert KEY in str(raised.value)
    # It waited for the answer (not failed at once), and for one read timeout only (one SDK attempt).
    assert read_timeout * 0.9 <= took <= read_timeout + SLACK_S
    assert sends == [1], "the SDK did not retry the timed-out call behind the lease table's back"

    proxy.restore()  # the held request may now land; either way the lease is still ours, as the table says
    [after] = await table.list_leases()
    assert after.lease_owner == "w" and after.lease_counter >= lease.lease_counter


async def test_a_renewal_with_retries_gives_up_before_the_lease_could_expire(dynamodb: Any, proxy: TcpProxy) -> None:
    options = lease_table_options(FAILOVER_S)
    retry = lease_retry(FAILOVER_S)
    table, lease = await held_lease(dynamodb, retry)

    sends = count_sends(dynamodb, "UpdateItem")
    proxy.hang()
    started = time.monotonic()
    with pytest.raises(LeaseTableError) as raised:
        await table.renew(lease, "w")
    took = time.monotonic() - started
    print(f"\nretried renewal on a stalled table failed after {took:.2f} s (failover {FAILOVER_S} s): {raised.value}")

    assert isinstance(raised.value.__cause__, ReadTimeoutError)
    assert sends[0] >= 2 and f"after {sends[0]} attempt(s)" in str(raised.value), "the lease table retried"
    # The last attempt starts within the budget and ends at most one timeout later: under the failover time.
    assert took <= retry.max_elapsed_s + options.read_timeout_s + SLACK_S
    assert retry.max_elapsed_s + options.connect_timeout_s + options.read_timeout_s < FAILOVER_S


async def test_a_coordinator_on_a_stalled_table_drops_its_lease_within_the_failover_time(
    dynamodb: Any, proxy: TcpProxy
) -> None:
    """The renewer is not stuck in a call: it notices it could not renew and stops processing the lease."""
    table = await new_table(dynamodb, lease_retry(FAILOVER_S))
    worker = LeaseCoordinator(table, "stalled", failover_time=FAILOVER_S)
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 10
        while worker.held() != {KEY}:
            assert time.monotonic() < deadline, "the worker never took the lease"
            await asyncio.sleep(0.05)
        proxy.hang()
        stalled = time.monotonic()
        while worker.held():
            assert time.monotonic() - stalled < FAILOVER_S + 2 * SLACK_S, "the lease was kept through the stall"
            await asyncio.sleep(0.05)
        dropped = time.monotonic() - stalled
        print(f"\nlease dropped {dropped:.2f} s into the stall (failover {FAILOVER_S} s)")
        # Not before its last successful renewal could have expired for the peers.
        assert dropped >= FAILOVER_S - FAILOVER_S / 3
    finally:
        proxy.restore()
        await worker.stop(release=False)
        await asyncio.wait_for(task, 15)
