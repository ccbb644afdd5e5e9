"""Pytest fixtures for the local stand-in servers.

Load with `pytest_plugins = ["tests.localstack_fixtures"]` in tests/conftest.py.

Servers start once per session, on 127.0.0.1 and free ports, and are stopped by PID at the end. The
function-scoped fixtures hand out the same server after emptying it, so every test starts clean:

    moto_server    MotoServer, reset (POST /moto-api/reset) before each test
    kinesalite     Kinesalite, every stream deleted before each test
    kinesis_local  KinesisLocal, every stream deleted before each test
    dynalite       Dynalite (DynamoDB), shared by the session: use unique table names
    tansu          TansuBroker, shared by the session: use unique topic and group names
    aws_env        dummy credentials and region; no real profile, credential source or endpoint leaks in
    dynamodb_client  an aiobotocore DynamoDB client on moto_server
    lease_table    a fresh, empty lease table (streamkit's LeaseTable) on moto_server, with fast retries

The *_session fixtures give the servers without the reset, for state shared across tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiobotocore.session import get_session

from streamkit.connectors.dynamodb import LeaseTable
from streamkit.devtools.localstack import Dynalite, Kinesalite, KinesisLocal, MotoServer, TansuBroker
from streamkit.retry import RetryPolicy

AWS_REGION = "us-east-1"

# Anything that could make botocore find real credentials, another region or another endpoint.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_CREDENTIAL_EXPIRATION",
)


@pytest.fixture(scope="session")
def moto_session() -> Iterator[MotoServer]:
    with MotoServer.start() as server:
        yield server


@pytest.fixture
def moto_server(moto_session: MotoServer) -> MotoServer:
    moto_session.reset()
    return moto_session


@pytest.fixture(scope="session")
def kinesalite_session() -> Iterator[Kinesalite]:
    with Kinesalite.start() as server:
        yield server


@pytest.fixture
def kinesalite(kinesalite_session: Kinesalite) -> Kinesalite:
    kinesalite_session.reset()
    return kinesalite_session


@pytest.fixture(scope="session")
def kinesis_local_session() -> Iterator[KinesisLocal]:
    with KinesisLocal.start() as server:
        yield server


@pytest.fixture
def kinesis_local(kinesis_local_session: KinesisLocal) -> KinesisLocal:
    kinesis_local_session.reset()
    return kinesis_local_session


@pytest.fixture(scope="session")
def dynalite_session() -> Iterator[Dynalite]:
    with Dynalite.start() as server:
        yield server


@pytest.fixture
def dynalite(dynalite_session: Dynalite) -> Dynalite:
    # No reset: tests create tables with unique names (a table costs nothing and dynalite keeps them in memory).
    return dynalite_session


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuBroker]:
    # No cheap reset: Tansu has no DeleteRecords and a fresh broker costs ~30 ms, so tests that need an
    # empty broker start their own with TansuBroker.start(); the rest use unique topic names.
    with TansuBroker.start() as broker:
        yield broker


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Dummy credentials (`testing`), a fixed region, and nothing from ~/.aws or the environment.

    Returns the variables it set. Endpoints are not set here: pass each server's endpoint_url explicitly
    (timestream-write ignores AWS_ENDPOINT_URL for its endpoint discovery).
    """
    for name in [*_AWS_VARS_TO_CLEAR, *(n for n in os.environ if n.startswith("AWS_ENDPOINT_URL"))]:
        monkeypatch.delenv(name, raising=False)
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_REGION": AWS_REGION,
        # Empty files: ~/.aws/config and ~/.aws/credentials are never read.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    # Loopback must never go through a proxy configured in the developer's shell.
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    values["NO_PROXY"] = values["no_proxy"] = no_proxy
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
async def dynamodb_client(moto_server: MotoServer, aws_env: dict[str, str]) -> AsyncIterator[Any]:
    """An aiobotocore DynamoDB client on the shared moto server."""
    async with get_session().create_client(
        "dynamodb", endpoint_url=moto_server.endpoint_url, region_name=aws_env["AWS_REGION"]
    ) as dynamodb:
        yield dynamodb


@pytest.fixture
async def lease_table(dynamodb_client: Any) -> LeaseTable:
    """A fresh lease table per test (moto is reset between tests; the unique name keeps runs apart anyway)."""
    table = LeaseTable(
        dynamodb_client,
        f"leases-{uuid.uuid4().hex[:8]}",
        retry=RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.2),
    )
    await table.ensure_exists(poll_interval=0.05)
    return table
