"""What each documented InfluxDB write answer means for each line (bodies as the InfluxDB docs show them)."""

from __future__ import annotations

import email.utils
import time

import orjson
import pytest

from streamkit.connectors.influxdb.responses import (
    PARTIAL_REPORT_LIMIT,
    FirstBad,
    Partial,
    Unclear,
    Written,
    interpret,
)
from streamkit.connectors.influxdb.sink import retry_after_seconds

LINES = [b"home,room=Sunroom temp=96 1735545600", b'home,room=Sunroom temp="hi" 1735549200', b"home x=1 1"]


def body(document: object) -> bytes:
    return orjson.dumps(document)


def test_204_means_every_line_was_written() -> None:
    assert interpret(204, b"", LINES) == Written()


def test_v3_partial_write_names_the_refused_lines() -> None:
    answer = body(
        {
            "error": "partial write of line protocol occurred",
            "data": [
                {
                    "original_line": "home,room=Sunroom temp=hi 1735549200",
                    "line_number": 2,
                    "error_message": "invalid column type for column 'temp', expected iox::column_type::field::float",
                }
            ],
        }
    )
    outcome = interpret(400, answer, LINES)
    assert isinstance(outcome, Partial) and outcome.complete
    assert list(outcome.refused) == [2] and "invalid column type" in outcome.refused[2]


def test_a_partial_report_of_100_lines_may_be_cut_short() -> None:
    lines = [b"m v=1 %d" % i for i in range(150)]
    data = [{"line_number": n, "error_message": "bad"} for n in range(1, PARTIAL_REPORT_LIMIT + 1)]
    outcome = interpret(400, body({"error": "partial write of line protocol occurred", "data": data}), lines)
    assert isinstance(outcome, Partial) and not outcome.complete


def test_v3_without_partial_writes_names_the_first_bad_line_and_wrote_nothing() -> None:
    answer = body(
        {
            "error": "parsing failed for write_lp endpoint",
            "data": {"original_line": "x", "line_number": 2, "error_message": "invalid column type"},
        }
    )
    assert interpret(400, answer, LINES) == FirstBad(2, "invalid column type")


def test_v2_400_names_the_first_malformed_line_by_number_or_by_quoting_it() -> None:
    by_number = body({"code": "invalid", "message": "unable to parse 'home x=': missing field value", "line": 3})
    assert interpret(400, by_number, LINES) == FirstBad(3, "unable to parse 'home x=': missing field value")
    quoting = body({"code": "invalid", "message": "unable to parse 'home x=1 1': bad timestamp"})
    assert interpret(400, quoting, LINES) == FirstBad(3, "unable to parse 'home x=1 1': bad timestamp")


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (422, body({"code": "unprocessable entity", "message": "partial write: field type conflict dropped=1"})),
        (413, body({"code": "request too large", "message": "points in batch is too large"})),
        (400, body({"code": "invalid", "message": "unable to parse 'not one of ours': x"})),
        (400, body({"error": "partial write of line protocol occurred", "data": [{"line_number": 9}]})),
        (400, b"<html>bad gateway page</html>"),
    ],
)
def test_answers_that_name_no_line_of_the_request_are_unclear(status: int, answer: bytes) -> None:
    outcome = interpret(status, answer, LINES)
    assert isinstance(outcome, Unclear)
    assert outcome.reason.startswith(f"HTTP {status}")


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= (retry_after_seconds(in_ten) or 0.0) <= 10.0
    assert retry_after_seconds(email.utils.formatdate(time.time() - 100, usegmt=True)) == 0.0
