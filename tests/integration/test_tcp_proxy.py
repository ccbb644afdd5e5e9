"""The fault-injecting TCP proxy (tests/tcp_proxy.py) against moto over HTTP: it passes, hangs and cuts."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from streamkit.devtools.localstack import MotoServer
from tests.tcp_proxy import TcpProxy


def client(endpoint: str) -> object:
    config = Config(connect_timeout=1, read_timeout=0.5, retries={"total_max_attempts": 1})
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("aws_env")
def test_the_proxy_passes_hangs_and_cuts_while_the_stand_in_keeps_its_state(moto_server: MotoServer) -> None:
    with TcpProxy.running(moto_server.endpoint_url) as proxy:
        s3 = client(proxy.endpoint_url)
        s3.create_bucket(Bucket="through-proxy")  # type: ignore[attr-defined]
        assert proxy.stats.connections >= 1 and proxy.stats.bytes_down > 0

        proxy.hang()
        began = time.monotonic()
        with pytest.raises(ReadTimeoutError):
            s3.head_bucket(Bucket="through-proxy")  # type: ignore[attr-defined]
        assert time.monotonic() - began >= 0.5, "the call waited: a stalled service, not a refused one"

        proxy.cut()
        resets = proxy.stats.reset  # the connection the hang held, unless the client already closed it
        with pytest.raises((EndpointConnectionError, ConnectionClosedError)):  # reset on accept
            client(proxy.endpoint_url).head_bucket(Bucket="through-proxy")  # type: ignore[attr-defined]
        assert proxy.stats.reset > resets, "a new connection is reset while cut"

        proxy.restore()
        s3.head_bucket(Bucket="through-proxy")  # type: ignore[attr-defined]
    # Only the path failed: moto still has the bucket.
    direct = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    assert "through-proxy" in [b["Name"] for b in direct.list_buckets()["Buckets"]]


def test_the_proxy_forwards_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        TcpProxy("192.0.2.1", 80)
