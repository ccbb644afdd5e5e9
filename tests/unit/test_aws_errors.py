"""The one AWS error classifier (connectors/aws_clients.py), over the errors each service models.

Every ClientError here is the modelled exception class botocore builds from the service's own model
(``client.exceptions.from_code``), carrying the HTTP status the service documents for it, so a code that a
service renamed or that botocore stopped modelling fails this table instead of silently turning permanent.
The clients are plain botocore clients, created offline (no call is made) only to reach their models.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import botocore.session
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from streamkit.connectors.aws_clients import (
    KINESIS_TRANSIENT_CODES,
    is_access_error,
    is_throttling,
    is_transient,
    lease_table_options,
    transient_reason,
)

_SESSION = botocore.session.get_session()
_CLIENTS: dict[str, Any] = {}


def modelled(service: str, code: str, status: int) -> ClientError:
    """The exception botocore raises for ``code`` from ``service``, as if the service had answered it."""
    client = _CLIENTS.get(service)
    if client is None:
        client = _SESSION.create_client(
            service, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        _CLIENTS[service] = client
    cls = client.exceptions.from_code(code)
    response = {"Error": {"Code": code, "Message": f"{code} (test)"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error: ClientError = cls(response, "Operation")
    return error


# (service, code, HTTP status, transient, throttling): what each service documents for its own errors.
SERVICE_ERRORS = [
    # DynamoDB: throttling and 5xx retry; a failed condition, a missing table, a bad request never.
    ("dynamodb", "ProvisionedThroughputExceededException", 400, True, True),
    ("dynamodb", "ThrottlingException", 400, True, True),
    ("dynamodb", "RequestLimitExceeded", 400, True, True),
    ("dynamodb", "LimitExceededException", 400, True, True),
    ("dynamodb", "InternalServerError", 500, True, False),
    ("dynamodb", "ConditionalCheckFailedException", 400, False, False),
    ("dynamodb", "ResourceNotFoundException", 400, False, False),
    ("dynamodb", "ResourceInUseException", 400, False, False),
    # Kinesis: its own throttling spelling and its KMS throttling; an expired iterator is not "transient"
    # (the reader renews it); a missing stream is final.
    ("kinesis", "ProvisionedThroughputExceededException", 400, True, True),
    ("kinesis", "LimitExceededException", 400, True, True),
    ("kinesis", "ExpiredIteratorException", 400, False, False),
    ("kinesis", "ResourceNotFoundException", 400, False, False),
    ("kinesis", "InvalidArgumentException", 400, False, False),
    ("kinesis", "KMSAccessDeniedException", 400, False, False),
    # Firehose
    ("firehose", "ServiceUnavailableException", 503, True, True),
    ("firehose", "InvalidArgumentException", 400, False, False),
    ("firehose", "ResourceNotFoundException", 400, False, False),
    ("firehose", "InvalidKMSResourceException", 400, False, False),
    # Timestream: RejectedRecords are per-record and dead-lettered, never retried as a call.
    ("timestream-write", "ThrottlingException", 429, True, True),
    ("timestream-write", "InternalServerException", 500, True, False),
    ("timestream-write", "RejectedRecordsException", 419, False, False),
    ("timestream-write", "ValidationException", 400, False, False),
    ("timestream-write", "AccessDeniedException", 403, False, False),
    # S3 (modelled codes plus the unmodelled SlowDown / 503 and 500 S3 answers with)
    ("s3", "NoSuchBucket", 404, False, False),
    ("s3", "SlowDown", 503, True, True),
    ("s3", "InternalError", 500, True, False),
    ("s3", "AccessDenied", 403, False, False),
    # STS, for assumed roles: a throttled AssumeRole retries; an expired token is an access error.
    ("sts", "ExpiredTokenException", 400, False, False),
    ("sts", "RegionDisabledException", 403, False, False),
]


@pytest.mark.parametrize(("service", "code", "status", "transient", "throttling"), SERVICE_ERRORS)
def test_modelled_service_errors_are_classified_as_documented(
    service: str, code: str, status: int, transient: bool, throttling: bool
) -> None:
    error = modelled(service, code, status)
    assert is_transient(error) is transient
    assert is_throttling(error) is throttling
    assert transient_reason(error) == (code if transient else None)


@pytest.mark.parametrize(
    ("service", "code", "status"),
    [
        ("kinesis", "KMSThrottlingException", 400),
        ("kinesis", "InternalFailureException", 500),
    ],
)
def test_kinesis_extras_are_transient_only_when_asked_for(service: str, code: str, status: int) -> None:
    error = modelled(service, code, status)
    assert code in KINESIS_TRANSIENT_CODES
    assert transient_reason(error, KINESIS_TRANSIENT_CODES) == code
    # InternalFailureException is a 5xx and transient anyway; KMSThrottlingException (a 400) needs the extra.
    assert is_transient(error) is (status >= 500)


def test_an_operation_can_wait_out_a_code_of_its_own() -> None:
    in_use = modelled("kinesis", "ResourceInUseException", 400)
    assert not is_transient(in_use)
    assert is_transient(in_use, {"ResourceInUseException"})


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SomethingNew", 502, True),  # an unknown 5xx: the service's fault, worth another attempt
        ("SomethingNew", 400, False),  # an unknown 4xx: ours
        ("AccessDeniedException", 500, False),  # access refusals never retry, whatever the status
        ("", 503, True),  # a bare 503 (an S3 or load-balancer page without a code)
    ],
)
def test_unmodelled_errors_follow_the_http_status(code: str, status: int, transient: bool) -> None:
    error = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Operation")
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (aiohttp.ClientPayloadError("cut mid-stream"), True),
        (TimeoutError(), True),
        (NoCredentialsError(), False),
        (ParamValidationError(report="bad"), False),
        (ValueError("not an SDK error"), False),
    ],
)
def test_sdk_and_network_errors(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
    assert transient_reason(error) == (type(error).__name__ if transient else None)


def test_access_errors() -> None:
    assert is_access_error(NoCredentialsError())
    assert is_access_error(modelled("timestream-write", "AccessDeniedException", 403))
    assert is_access_error(modelled("sts", "ExpiredTokenException", 400))
    assert not is_access_error(modelled("dynamodb", "ProvisionedThroughputExceededException", 400))


@pytest.mark.parametrize("failover_s", [0.6, 1.0, 3.0, 10.0, 60.0])
def test_lease_client_fails_a_call_within_a_third_of_the_failover_time(failover_s: float) -> None:
    options = lease_table_options(failover_s)
    # One attempt per call (the lease table retries itself): connecting plus reading stays under failover/3.
    assert options.sdk_max_attempts == 1
    assert options.connect_timeout_s + options.read_timeout_s < failover_s / 3
    assert options.read_timeout_s <= 2.0
