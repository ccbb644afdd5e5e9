"""``streamkit plan`` and ``validate --explain``: the physical plan as the chain will run it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from streamkit.build import build_pipeline
from streamkit.cli import EXIT_CONFIG, EXIT_OK, main
from streamkit.config import load_config
from streamkit.planner import FusedJson

PIPELINE = """
name: clicks
source: {type: generator}
processors:
  - type: json.decode
  - type: filter
    where: {field: status, not_equals: err}
  - type: timestamp
    field: ts
  - callable: json:dumps
    name: my-plugin
  - type: json.decode
  - type: map
    fields: [id, user.country]
sinks:
  - type: memory
    name: all
  - type: memory
    name: de
    when: {field: country, equals: DE}
dead_letter: {type: memory}
"""

NATURAL = """
name: natural
source: {type: generator}
processors:
  - type: json.decode
  - type: filter
    where: {field: status, not_equals: err}
  - type: map
    fields: [id, event, user, amount]
  - type: json.encode
sinks:
  - type: memory
    name: out
    when: {field: event, equals: click}
"""


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() points structlog at this test's captured stderr; later tests must not log to it once closed."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_plan_shows_fused_steps_decoded_fields_and_where_a_plugin_breaks_fusion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(write(tmp_path, PIPELINE))]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "physical plan of 'clicks': 6 processor(s) as written, 3 step(s)"
    assert out[1] == "  step 1: fused   json.decode -> filter -> timestamp"
    assert out[2].split("decodes")[1].strip().startswith("status, ts;")
    assert "ends before 'my-plugin': a plugin or callable" in out[3]
    assert "step 2: alone   my-plugin" in "\n".join(out)
    assert any(line.startswith("  step 3: fused   json.decode -> map") for line in out)
    assert any("decodes  id, user.country;" in line for line in out)
    assert any(line.startswith("  cost ") for line in out)
    assert "  all: reads no fields (writes the records' bytes)" in out
    assert any(line.startswith("  de: reads country: from the output of the last map") for line in out)


def test_the_plan_printed_is_the_plan_that_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, NATURAL)
    pipeline = build_pipeline(load_config(path))
    assert len(pipeline.chain.stages) == 1
    fused = pipeline.chain.stages[0]
    assert isinstance(fused, FusedJson) and fused.fast is not None
    assert main(["plan", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "step 1: fused   json.decode -> filter -> map -> json.encode" in out
    assert "decodes  status, id, event, user, amount;" in out
    assert "projection: only the kept fields are built" in out


def test_validate_explain_adds_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, NATURAL)
    assert main(["validate", str(path)]) == EXIT_OK
    assert "physical plan" not in capsys.readouterr().out
    assert main(["validate", "--explain", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "valid pipeline 'natural'" in out and "physical plan of 'natural'" in out


def test_plan_of_an_invalid_pipeline_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, NATURAL.replace("fields: [id, event, user, amount]", "fields: []"))
    assert main(["plan", str(path)]) == EXIT_CONFIG
    assert "processors[2].fields" in capsys.readouterr().err


ROUTED = """
name: routed
source: {type: generator}
processors:
  - type: json.decode
  - type: filter
    where: {field: status, not_equals: err}
sinks:
  - type: memory
    name: purchases
    when: {field: event, equals: purchase}
  - type: s3
    name: lake
    bucket: b
    partition_template: "country={field.user.country}/"
"""


def test_plan_shows_the_sink_fields_decoded_in_the_fused_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, ROUTED)
    assert build_pipeline(load_config(path)).chain.steps[-1].sink_fields == ["event", "user.country"]
    assert main(["plan", str(path)]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert "          decodes  status, event, user.country; every other field is skipped while parsing" in out
    assert "          note     sinks read event, user.country: decoded in this pass, not from whole records" in out
    assert "  purchases: reads event: from views decoded in the fused pass (step 1), never whole records" in out
    assert any(
        line.startswith("  lake: reads user.country: from views decoded") and "as its values" in line for line in out
    )


def test_plan_says_why_sink_fields_are_not_pushed_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, ROUTED.replace("{field: event, equals: purchase}", '{callable: "builtins:bool"}'))
    assert build_pipeline(load_config(path)).chain.steps[-1].sink_fields is None
    assert main(["plan", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "decodes  status; every" in out
    assert "sink fields not decoded here: sink 'purchases': its when: calls user code" in out
    assert "  lake: reads user.country: from whole records decoded" in out


def test_plan_says_avro_decode_is_not_fused_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = {"type": "record", "name": "E", "fields": [{"name": "status", "type": "string"}]}
    (tmp_path / "e.avsc").write_text(json.dumps(schema))
    text = NATURAL.replace("  - type: json.decode\n", '  - {type: avro.decode, schemas: {"1": e.avsc}}\n')
    assert main(["plan", str(write(tmp_path, text))]) == EXIT_OK
    out = capsys.readouterr().out
    assert "step 1: alone   avro.decode" in out
    assert "avro.decode is not fused: fastavro cannot skip fields faster than it reads them" in out
    assert "measured 0.72-0.89x of whole records" in out


def test_plan_shows_the_fields_a_timestream_mapping_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = """
name: metrics
source: {type: generator}
processors:
  - type: json.decode
sinks:
  - type: timestream
    name: ts
    database: db
    table: t
    dimensions: [event]
    measures: [{name: seq, type: BIGINT}]
"""
    assert main(["plan", str(write(tmp_path, text))]) == EXIT_OK
    out = capsys.readouterr().out
    assert "decodes  event, seq; every other field is skipped while parsing" in out
    assert "  ts: reads event, seq: from views decoded in the fused pass (step 1), never whole records; " in out
