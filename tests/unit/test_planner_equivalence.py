"""The chain planner's fused steps give exactly what the stages give run one by one.

Random chains of built-in stages (json.decode, filter, map, timestamp, json.encode, and now and then a
plugin in the middle) over random records (valid, malformed JSON, invalid UTF-8, non-objects, missing and
mistyped fields) run planned and unplanned; outputs (bytes, values, origins, event times), dead-letter
entries (stage, reason, record) and, through the runtime, checkpoints must be identical.

The two differences docs/performance.md states (numbers beyond 64-bit integers or the float range) are
left out of the inputs explicitly (``assume``), not by luck.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamkit.batch import Partition, RecordBatch
from streamkit.chain import Chain
from streamkit.checkpoint import MemoryCheckpointStore
from streamkit.config import AwsSettings, Size
from streamkit.connectors.local.memory_sink import MemoryDeadLetter, MemorySink, MemorySinkOptions
from streamkit.connectors.local.replay import ReplaySource
from streamkit.connectors.s3.keys import compile_partitioner
from streamkit.connectors.timestream.mapping import DimensionOptions, MeasureOptions, RecordMapping, TimeOptions
from streamkit.dispatch import Dispatch
from streamkit.metrics import Metrics
from streamkit.planner import AVRO_NOT_FUSED, FusedJson
from streamkit.plugin_env import PluginEnv
from streamkit.predicates import batch_predicate, compile_values_predicate, predicate_fields
from streamkit.processor import PerRecord, Processor
from streamkit.processors.avro_codec import AvroDecode, AvroDecodeOptions
from streamkit.processors.filter import Filter
from streamkit.processors.json_codec import JsonDecode, JsonEncode
from streamkit.processors.project import Map
from streamkit.processors.timestamp import Timestamp
from streamkit.runtime import Pipeline, Route, Runtime
from streamkit.sink_views import SinkReads, ViewedBatch, for_sink, sink_reads
from tests.helpers import P, json_batch, ticketed

ENV = PluginEnv("t", AwsSettings(), Path.cwd(), where="processors[0]")
OUT_OF_RANGE = re.compile(rb"-[0-9]{19}|[0-9]{20}|[eE][+-]?[0-9]{3}")
"""Numbers where the fused decoder and orjson differ by design (docs/performance.md)."""

FIELDS = ["id", "status", "user", "amount", "ts", "tags", "user.country", "user.id", "user.geo.city"]
TOP = ["id", "status", "user", "amount", "ts", "tags", "junk"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["ok", "err", "DE", "US", "2026-11-26T13:05:00Z", "1700000000000"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["id", "country", "geo", "city"]), inner, max_size=3)
    ),
    max_leaves=6,
)
records = st.dictionaries(st.sampled_from(TOP), json_values, max_size=6)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    record = draw(records)
    kind = draw(
        st.sampled_from(["valid"] * 6 + ["indented", "truncated", "bad-utf8", "non-object", "binary", "dup-key"])
    )
    if kind == "valid":
        return orjson.dumps(record)
    if kind == "indented":
        return orjson.dumps(record, option=orjson.OPT_INDENT_2)
    if kind == "truncated":
        raw = orjson.dumps(record)
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "bad-utf8":
        # Invalid UTF-8 in a field no stage reads: orjson rejects the record, so must the fused step.
        return (
            b'{"junk":"'
            + draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"a\xe2"]))
            + b'",'
            + orjson.dumps(record)[1:]
            if record
            else b'{"junk":"\xff"}'
        )
    if kind == "non-object":
        return orjson.dumps(draw(json_values))
    if kind == "dup-key":
        key = draw(st.sampled_from(TOP))
        return (
            b'{"' + key.encode() + b'":' + orjson.dumps(draw(json_values)) + b"," + orjson.dumps(record)[1:]
            if record
            else b"{}"
        )
    return draw(st.binary(max_size=24))


def predicates(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    leaf = (
        st.builds(
            lambda f, op, ref: {"field": f, op: ref},
            st.sampled_from(FIELDS),
            st.sampled_from(["equals", "not_equals", "gt", "le", "matches"]),
            st.sampled_from(["ok", "err", "DE", 0, 5, 1.5, None, "^U"]),
        )
        | st.builds(
            lambda f, ref: {"field": f, "in": ref},
            st.sampled_from(FIELDS),
            st.lists(st.sampled_from(["ok", "DE", 1, None]), max_size=3),
        )
        | st.builds(lambda f, b: {"field": f, "exists": b}, st.sampled_from(FIELDS), st.booleans())
    )
    if depth == 0:
        return leaf
    inner = predicates(depth - 1)
    return (
        leaf
        | st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=2))
        | st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=2))
        | st.builds(lambda x: {"not": x}, inner)
    )


def tag(value: Any) -> Any:
    """A plugin in the middle of a chain: user code that reads whole records."""
    return {"wrapped": value} if not isinstance(value, dict) else {**value, "seen": len(value)}


@st.composite
def stages(draw: st.DrawFn) -> Processor:
    kind = draw(st.sampled_from(["filter", "filter", "map", "map", "timestamp", "encode", "decode", "plugin"]))
    if kind == "filter":
        return Filter(Filter.Options(where=draw(predicates()), drop=draw(st.booleans())), ENV)
    if kind == "map":
        chosen = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True))
        fields: Any = chosen if draw(st.booleans()) else {f"o{i}_{p}": p for i, p in enumerate(chosen)}
        return Map(Map.Options(fields=fields, missing=draw(st.sampled_from(["omit", "null", "fail"]))), ENV)
    if kind == "timestamp":
        options = Timestamp.Options(
            field=draw(st.sampled_from(["ts", "user.id", "amount", "o0_ts"])),
            unit=draw(st.sampled_from(["ms", "s", "iso8601"])),
            on_missing=draw(st.sampled_from(["arrival", "fail"])),
        )
        return Timestamp(options)
    if kind == "encode":
        return JsonEncode(JsonEncode.Options(sort_keys=draw(st.booleans())))
    if kind == "decode":
        return JsonDecode()
    return PerRecord(tag)


chains = st.builds(lambda rest: [JsonDecode(), *rest], st.lists(stages(), max_size=5))


@st.composite
def unmapped_stages(draw: st.DrawFn) -> Processor:
    """Stages of a run that hands on the source bytes: the chains whose sinks' fields are pushed down."""
    stage = draw(stages())
    assume(not isinstance(stage, (Map, PerRecord)))
    return stage


unmapped_chains = st.builds(lambda rest: [JsonDecode(), *rest], st.lists(unmapped_stages(), max_size=4))


@st.composite
def projection_chains(draw: st.DrawFn) -> list[Processor]:
    """The shape most pipelines have (filters, a projection of top-level fields, json.encode), which the
    planner runs through json.project in exact mode."""
    filters = [
        Filter(Filter.Options(where=draw(predicates(1)), drop=draw(st.booleans())), ENV)
        for _ in range(draw(st.integers(0, 2)))
    ]
    kept = draw(st.lists(st.sampled_from(TOP), min_size=1, max_size=4, unique=True))
    if "amount" not in kept and draw(st.booleans()):
        kept.append("amount")  # where the test puts large floats
    fields: Any = kept if draw(st.booleans()) else {k: k for k in kept}
    tail: list[Processor] = [JsonEncode()] if draw(st.booleans()) else []
    return [JsonDecode(), *filters, Map(Map.Options(fields=fields), ENV), *tail]


def outputs_of(batches: list[RecordBatch]) -> list[Any]:
    return [
        (
            b.payloads,
            b.values if b.decoded else None,
            b.origin.tolist(),
            None if b.event_ms is None else b.event_ms.tolist(),
        )
        for b in batches
    ]


def failures_of(failures: list[Any]) -> list[Any]:
    return [(f.stage, f.reason, f.batch.origin.tolist(), f.batch.payloads) for f in failures]


def excluded(payloads: list[bytes]) -> bool:
    return any(OUT_OF_RANGE.search(p) for p in payloads)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains, data=st.lists(payloads(), min_size=1, max_size=12))
async def test_planned_chain_gives_what_the_stages_give(chain: list[Processor], data: list[bytes]) -> None:
    assume(not excluded(data))
    planned_batch, _ = ticketed([0] * len(data))  # a ticket, for positions; the payloads are replaced
    planned_batch = RecordBatch(planned_batch.partition, payloads=list(data), ticket=planned_batch.ticket)
    plain_batch = RecordBatch(planned_batch.partition, payloads=list(data), ticket=planned_batch.ticket)
    planned = await Chain(chain).run(planned_batch)
    plain = await Chain(chain, plan=False).run(plain_batch)
    assert outputs_of(planned[0]) == outputs_of(plain[0])
    assert failures_of(planned[1]) == failures_of(plain[1])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chain=projection_chains(),
    data=st.lists(st.builds(orjson.dumps, records) | payloads(), min_size=1, max_size=12),
    ascii_only=st.booleans(),
    big=st.lists(st.floats(min_value=1e16, max_value=1e99) | st.floats(min_value=-1e99, max_value=-1e16), max_size=3),
)
async def test_projection_path_gives_what_the_stages_give(
    chain: list[Processor], data: list[bytes], ascii_only: bool, big: list[float]
) -> None:
    if ascii_only:  # batches the fast path takes whole (any non-ASCII byte sends a batch the general way)
        data = [p for p in data if p.isascii()]
    # Floats orjson writes as 1e+16 (msgspec as 1e16) must leave the fast path, not change the bytes.
    data = [*data, *(orjson.dumps({"amount": f, "id": 1, "status": "ok"}) for f in big)]
    assume(data)
    assume(not excluded(data))
    planned_chain = Chain(chain)
    assert isinstance(planned_chain.stages[0], FusedJson) and planned_chain.stages[0].fast is not None
    ticket = ticketed([0] * len(data))[0].ticket
    planned = await planned_chain.run(RecordBatch(P, payloads=list(data), ticket=ticket))
    plain = await Chain(chain, plan=False).run(RecordBatch(P, payloads=list(data), ticket=ticket))
    assert outputs_of(planned[0]) == outputs_of(plain[0])
    assert failures_of(planned[1]) == failures_of(plain[1])


async def test_the_planner_fuses_the_natural_spelling() -> None:
    """Not vacuous: the chains above do run fused steps."""
    chain = Chain(
        [
            JsonDecode(),
            Filter(Filter.Options(where={"field": "status", "not_equals": "err"}), ENV),
            Map(Map.Options(fields=["id", "user.country"]), ENV),
            JsonEncode(),
        ]
    )
    assert len(chain.stages) == 1 and isinstance(chain.stages[0], FusedJson)
    assert chain.steps[0].fields == ["status", "id", "user.country"]


class PartitionedSink(MemorySink):
    """An S3-like sink: it keeps values only to put records in Hive partitions by a field template (as the S3
    sink over NDJSON does), so it declares ``value_fields`` and may get views instead of whole records."""

    keeps_values = True

    def __init__(self, template: str) -> None:
        super().__init__(MemorySinkOptions(max_records=6, max_bytes=Size(1 << 20)))
        self.partitioner = compile_partitioner(template)
        self.value_fields = self.partitioner.fields
        self.partitions: dict[tuple[Partition, Any], str] = {}
        """The Hive partition of every record written, by (source partition, position)."""

    async def write(self, batches: Sequence[RecordBatch]) -> list[Any]:
        for batch in batches:
            times = batch.event_ms if batch.event_ms is not None else batch.arrival_ms
            for hive, indexes in self.partitioner.group(times, batch.values).items():
                self.partitions.update({(batch.partition, batch.position(i)): hive for i in indexes.tolist()})
        return await super().write(batches)


TEMPLATES = ["country={field.user.country}/", "s={field.status}/c={field.user.geo.city}/", "u={field.user}/"]


async def run_pipeline(
    data: dict[str, list[bytes]], chain: list[Processor], plan: bool, when: dict[str, Any], template: str = TEMPLATES[0]
) -> Any:
    routed = MemorySink(MemorySinkOptions(max_records=7, max_bytes=Size(1 << 20)))
    everything = MemorySink(MemorySinkOptions(max_records=5, max_bytes=Size(1 << 20)))
    partitioned = PartitionedSink(template)
    dead = MemoryDeadLetter()
    dead.pipeline = "t"
    predicate = batch_predicate(compile_values_predicate(when, "sinks[0].when", ENV.resolve), predicate_fields(when))
    routes = [Route("routed", routed, predicate), Route("all", everything), Route("partitioned", partitioned)]
    chain_built = Chain(chain, plan=plan, sinks=sink_reads(routes))
    pipeline = Pipeline(
        name="t",
        source=ReplaySource(data, batch_size=9),
        chain=chain_built,
        routes=routes,
        dead_letters=dead,
        store=MemoryCheckpointStore(),
        checkpoint_interval_s=0.05,
    )
    for route in routes:
        route.sink.bind(route.name, dead, pipeline.metrics)
    summary = await Runtime(pipeline).run(asyncio.Event())
    # In order within each partition; the two partitions run concurrently, so their entries interleave freely.
    dead_entries: dict[str, list[dict[str, Any]]] = {}
    for entry in dead.entries:
        dead_entries.setdefault(entry["partition"], []).append({k: v for k, v in entry.items() if k != "failed_at"})
    return routed.records, everything.records, dead_entries, summary.checkpoints, partitioned.partitions


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains, data=st.lists(payloads(), min_size=1, max_size=20), when=predicates(1))
async def test_planned_pipeline_writes_dead_letters_and_checkpoints_the_same(
    chain: list[Processor], data: list[bytes], when: dict[str, Any]
) -> None:
    assume(not excluded(data))
    partitions = {"0": data, "1": list(reversed(data))}
    planned = await run_pipeline(partitions, chain, True, when)
    plain = await run_pipeline(partitions, chain, False, when)
    assert planned == plain
    # Every record was written or dead-lettered: both partitions are checkpointed at their last record.
    last = str(len(data) - 1)
    assert planned[3] == {Partition("replay", "0"): last, Partition("replay", "1"): last}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chain=unmapped_chains,
    data=st.lists(payloads(), min_size=1, max_size=20),
    when=predicates(1),
    template=st.sampled_from(TEMPLATES),
)
async def test_sink_fields_decoded_in_the_fused_pass_route_and_partition_the_same(
    chain: list[Processor], data: list[bytes], when: dict[str, Any], template: str
) -> None:
    """Chains that hand on the source bytes, where the sinks' when: and partition fields are pushed into
    the fused decoder: routing, partitions (missing fields, non-objects, nested paths), dead letters and
    checkpoints as the unplanned chain gives them."""
    assume(not excluded(data))
    partitions = {"0": data, "1": list(reversed(data))}
    planned = await run_pipeline(partitions, chain, True, when, template)
    plain = await run_pipeline(partitions, chain, False, when, template)
    assert planned == plain


async def test_sink_fields_are_read_from_views_not_whole_records() -> None:
    """Not vacuous: with a when: sink and a partitioned sink after json.decode -> filter, the fused step
    decodes their fields, routing reads the views, and no whole record is ever decoded."""
    when = {"field": "user.country", "equals": "DE"}
    routed = MemorySink()
    partitioned = PartitionedSink("c={field.user.geo.city}/")
    predicate = batch_predicate(compile_values_predicate(when, "sinks[0].when", ENV.resolve), predicate_fields(when))
    routes = [Route("routed", routed, predicate), Route("partitioned", partitioned)]
    keep_ok = Filter(Filter.Options(where={"field": "status", "equals": "ok"}), ENV)
    chain = Chain([JsonDecode(), keep_ok], sinks=sink_reads(routes))
    assert chain.steps[0].fields == ["status", "user.country", "user.geo.city"]
    assert chain.steps[0].sink_fields == ["user.country", "user.geo.city"]
    records: list[dict[str, Any]] = [
        {"status": "ok", "user": {"country": "DE", "geo": {"city": "Berlin"}}, "pad": "x" * 50},
        {"status": "ok", "user": {"country": "FR"}},
        {"status": "err", "user": {"country": "DE"}},
        {"status": "ok", "user": "nobody"},
    ]
    outputs, failures = await chain.run(json_batch(records))
    assert failures == []
    [out] = outputs
    assert isinstance(out, ViewedBatch)
    assert out.views == [
        {"status": "ok", "user": {"country": "DE", "geo": {"city": "Berlin"}}},
        {"status": "ok", "user": {"country": "FR"}},
        {"status": "ok", "user": "nobody"},
    ]
    deliveries = Dispatch(chain, routes, None, Metrics()).deliveries(outputs)
    assert out.values_held is None  # the predicate read the views: no record was decoded whole
    by_sink = {id(sink): sub for sink, sub in deliveries}
    assert by_sink[id(routed)].payloads == [orjson.dumps(records[0])]
    to_partitioned = by_sink[id(partitioned)]
    assert not isinstance(to_partitioned, ViewedBatch)
    assert to_partitioned.values == out.views  # the views are its values, with the bytes as written
    assert to_partitioned.payloads == [orjson.dumps(r) for r in records if r["status"] == "ok"]
    # A sink reading whole values gets whole records, decoded on demand.
    full = for_sink(out, None)
    assert not isinstance(full, ViewedBatch)
    assert full.values == [r for r in records if r["status"] == "ok"]


async def test_a_when_calling_user_code_turns_the_push_down_off() -> None:
    everything = batch_predicate(compile_values_predicate({"callable": "builtins:bool"}, "sinks[0].when", ENV.resolve))
    assert everything.fields is None
    routes = [Route("any", MemorySink(), everything), Route("partitioned", PartitionedSink("u={field.user}/"))]
    chain = Chain([JsonDecode()], sinks=sink_reads(routes))
    assert chain.steps[0].sink_fields is None
    assert any("calls user code" in note for note in chain.steps[0].notes)
    outputs, _ = await chain.run(json_batch([{"user": 1}]))
    assert not isinstance(outputs[0], ViewedBatch)


def test_out_of_range_guard_is_real() -> None:
    assert excluded([b'{"a":1e400}']) and excluded([b'{"a":18446744073709551616}'])
    assert excluded([b'{"a":-9223372036854775809}'])
    assert not excluded([orjson.dumps({"a": 1.5, "b": 2**63, "c": 1e22, "d": -(2**59)})])


# -- avro.decode chains: not fused (docs/performance.md), and planning the rest must not change a thing --------
AVRO_SCHEMA = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "status", "type": "string"},
        {"name": "ts", "type": ["null", "long", "string"]},
        {
            "name": "user",
            "type": {
                "type": "record",
                "name": "User",
                "fields": [{"name": "id", "type": "long"}, {"name": "country", "type": ["null", "string"]}],
            },
        },
        {"name": "amount", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
avro_values = st.fixed_dictionaries(
    {
        "id": st.integers(-(2**63), 2**63 - 1),
        "status": st.sampled_from(["ok", "err", "", "DE"]),
        "ts": st.none() | st.integers(0, 2**45) | st.sampled_from(["2026-11-26T13:05:00Z", "x"]),
        "user": st.fixed_dictionaries({"id": st.integers(-5, 5), "country": st.none() | st.sampled_from(["DE", "US"])}),
        "amount": st.floats(allow_nan=False, allow_infinity=False),
        "tags": st.lists(st.text(max_size=4), max_size=3),
    }
)


@st.composite
def avro_payloads(draw: st.DrawFn) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(AVRO_SCHEMA), draw(avro_values))
    body = out.getvalue()
    kind = draw(st.sampled_from(["valid"] * 5 + ["truncated", "bad-magic", "unknown-id", "bad-utf8", "short"]))
    if kind == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    if kind == "bad-utf8":  # the status string's first byte (after the zigzag id varint and the length)
        at = next(i for i in range(len(body)) if body[i] < 0x80) + 2
        body = body[:at] + b"\xff" + body[at + 1 :] if at < len(body) else body
    schema_id = 9 if kind == "unknown-id" else 1
    framed = (1 if kind == "bad-magic" else 0).to_bytes(1, "big") + schema_id.to_bytes(4, "big") + body
    return framed[:3] if kind == "short" else framed


@pytest.fixture(scope="module")
def avro_env(tmp_path_factory: pytest.TempPathFactory) -> PluginEnv:
    directory = tmp_path_factory.mktemp("avro")
    (directory / "event.avsc").write_text(orjson.dumps(AVRO_SCHEMA).decode())
    return PluginEnv("t", AwsSettings(), directory, where="processors[0]")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rest=st.lists(stages(), max_size=5), data=st.lists(avro_payloads(), min_size=1, max_size=12))
async def test_avro_chains_give_what_the_stages_give(
    avro_env: PluginEnv, rest: list[Processor], data: list[bytes]
) -> None:
    chain = [AvroDecode(AvroDecodeOptions(schemas={"1": "event.avsc"}), avro_env), *rest]
    planned_chain = Chain(chain)
    assert planned_chain.stages[0] is chain[0], "avro.decode runs alone"
    assert planned_chain.steps[0].notes == [AVRO_NOT_FUSED]
    ticket = ticketed([0] * len(data))[0].ticket
    planned = await planned_chain.run(RecordBatch(P, payloads=list(data), ticket=ticket))
    plain = await Chain(chain, plan=False).run(RecordBatch(P, payloads=list(data), ticket=ticket))
    assert outputs_of(planned[0]) == outputs_of(plain[0])
    assert failures_of(planned[1]) == failures_of(plain[1])


# -- a Timestream mapping reads its fields only: it gets the views as values -----------------------------
@st.composite
def timestream_mappings(draw: st.DrawFn) -> RecordMapping:
    paths = st.sampled_from(FIELDS)
    dimensions = [DimensionOptions(name=f"d{i}", field=draw(paths)) for i in range(draw(st.integers(0, 2)))]
    measures = [
        MeasureOptions(
            name=f"m{i}",
            field=draw(paths),
            type=draw(st.sampled_from(["DOUBLE", "BIGINT", "VARCHAR", "BOOLEAN", "TIMESTAMP"])),
            optional=draw(st.booleans()),
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    time = TimeOptions(field=draw(st.none() | st.sampled_from(["ts", "user.id", "amount"])))
    return RecordMapping(
        time=time, dimensions=dimensions, measures=measures, measure_name="m" if len(measures) > 1 else None
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rest=st.lists(unmapped_stages(), max_size=3),
    data=st.lists(payloads(), min_size=1, max_size=12),
    mapping=timestream_mappings(),
)
async def test_a_timestream_mapping_over_views_gives_what_it_gives_over_whole_records(
    rest: list[Processor], data: list[bytes], mapping: RecordMapping
) -> None:
    """The Timestream sink declares its mapping's fields as value_fields: mapped over the views of the
    fused pass, records, dead-letter reasons (missing measures, non-objects, bad types) are the same."""
    assume(not excluded(data))
    chain = [JsonDecode(), *rest]
    ticket = ticketed([0] * len(data))[0].ticket
    planned_chain = Chain(chain, sinks=SinkReads(fields=mapping.fields))
    planned, _ = await planned_chain.run(RecordBatch(P, payloads=list(data), ticket=ticket))
    plain, _ = await Chain(chain, plan=False).run(RecordBatch(P, payloads=list(data), ticket=ticket))
    # The whole chain one fused step over the source bytes (unless json.encode with sort_keys split it):
    # then the mapping's fields are decoded in it and handed to the sink as its values.
    fused_whole = len(planned_chain.stages) == 1
    if fused_whole:
        assert planned_chain.steps[0].sink_fields == list(mapping.fields)
    assert len(planned) == len(plain)
    for out, whole in zip(planned, plain, strict=True):
        given = for_sink(out, mapping.fields)
        if fused_whole:
            assert isinstance(out, ViewedBatch)
            assert given.values_held is out.views
        assert mapping.map_batch(given) == mapping.map_batch(whole)
