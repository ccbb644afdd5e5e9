"""Just enough of the Kinesis JSON protocol to empty a local Kinesis server between tests.

The core package imports no AWS SDK, so reset() speaks the wire protocol itself. Neither kinesalite nor
kinesis-local checks signatures; kinesalite only wants an Authorization header of the right shape.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from ._process import LOOPBACK, LocalStackError

_FAKE_AUTH = (
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/kinesis/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0"
)


def call(port: int, operation: str, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"Kinesis_20131202.{operation}",
        "X-Amz-Date": "20240101T000000Z",
        "Authorization": _FAKE_AUTH,
    }
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    data: dict[str, Any] = json.loads(raw) if raw else {}
    if response.status != 200:
        raise LocalStackError(f"Kinesis {operation} on 127.0.0.1:{port} failed ({response.status}): {data}")
    return data


def stream_names(port: int) -> list[str]:
    names: list[str] = []
    request: dict[str, Any] = {"Limit": 100}
    while True:
        page = call(port, "ListStreams", request)
        names.extend(page.get("StreamNames", []))
        if not page.get("HasMoreStreams") or not names:
            return names
        request = {"Limit": 100, "ExclusiveStartStreamName": names[-1]}


def delete_all_streams(port: int, timeout: float = 10.0) -> None:
    """Delete every stream and wait until the server lists none."""
    deadline = time.monotonic() + timeout
    while names := stream_names(port):
        for name in names:
            try:
                call(port, "DeleteStream", {"StreamName": name})
            except LocalStackError as exc:
                # A stream still CREATING/DELETING refuses; the next round deletes or no longer lists it.
                if "ResourceInUse" not in str(exc) and "ResourceNotFound" not in str(exc):
                    raise
        if time.monotonic() > deadline:
            raise LocalStackError(f"streams on 127.0.0.1:{port} still listed after {timeout} s: {names}")
        time.sleep(0.02)
