"""S3 object keys and Hive partitions: determinism, ordering, escaping, validation, discoverability."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from streamkit.connectors.s3.formats import make_writer
from streamkit.connectors.s3.keys import (
    HIVE_DEFAULT_PARTITION,
    MISSING_EVENT_TIME,
    PositionLike,
    TemplateError,
    compile_key_template,
    compile_partitioner,
    hive_escape,
    render_position,
)

KINESIS_SEQ = "49590338271490256608559692538361571095921575989136588898"  # 56 digits, as today
T0 = 1_764_165_600_000  # 2025-11-26T14:00:00Z
HOUR = 3_600_000

# ----------------------------------------------------------------------------------------- positions


def test_numeric_positions_are_fixed_width_by_class() -> None:
    assert render_position(15) == "00000000000000000015"  # Kafka offset: 20 digits hold any int64
    assert render_position("15") == render_position(15) == render_position("0015")
    assert render_position(KINESIS_SEQ) == "0" * 8 + KINESIS_SEQ  # Kinesis today: 64
    assert render_position("9" * 128) == "9" * 128  # the documented maximum


def test_sub_sequence_numbers_follow_the_sequence_number() -> None:
    assert render_position((KINESIS_SEQ, 3)) == render_position(KINESIS_SEQ) + ".0000000003"
    assert render_position(KINESIS_SEQ) < render_position((KINESIS_SEQ, 0)) < render_position((KINESIS_SEQ, 12))
    with pytest.raises(ValueError, match="negative"):
        render_position((KINESIS_SEQ, -1))


@pytest.mark.parametrize("digits", [19, 56, 128])
def test_rendered_positions_sort_like_the_numbers(digits: int) -> None:
    rnd = random.Random(digits)
    base = rnd.randrange(10 ** (digits - 1), 10**digits // 2)
    positions: list[PositionLike] = [
        (str(base + rnd.randrange(10**6)), rnd.choice([None, rnd.randrange(500)])) for _ in range(500)
    ]
    positions += [str(base + rnd.randrange(10**6)) for _ in range(500)]

    def numeric(p: PositionLike) -> tuple[int, int]:
        seq, sub = p if isinstance(p, tuple) else (p, None)
        return int(seq), -1 if sub is None else sub

    assert sorted(positions, key=render_position) == sorted(positions, key=numeric)


def test_opaque_positions_are_escaped_so_keys_stay_unambiguous() -> None:
    assert render_position("a-b.c/d") == "a%2Db%2Ec%2Fd"
    assert render_position(-5) == "%2D5"
    with pytest.raises(ValueError, match="empty"):
        render_position("")


# ------------------------------------------------------------------------------------------- keys


def kinesis_key(first: PositionLike, last: PositionLike, partition: str = "dt=2025-11-26/hour=14/") -> str:
    keys = compile_key_template(prefix="raw/")
    key: str = keys.key(
        stream="orders",
        shard="shardId-000000000004",
        first_position=first,
        last_position=last,
        partition=partition,
        extension=".ndjson.gz",
    )
    return key


def test_default_key_layout() -> None:
    assert kinesis_key(KINESIS_SEQ, (KINESIS_SEQ, 7)) == (
        "raw/dt=2025-11-26/hour=14/orders/shardId-000000000004/"
        f"00000000{KINESIS_SEQ}-00000000{KINESIS_SEQ}.0000000007.ndjson.gz"
    )


def test_keys_are_deterministic_and_depend_on_both_ends() -> None:
    seq = int(KINESIS_SEQ)
    assert kinesis_key(str(seq), str(seq + 9)) == kinesis_key(str(seq), str(seq + 9))
    assert kinesis_key(str(seq), str(seq + 9)) != kinesis_key(str(seq), str(seq + 8))
    assert kinesis_key(str(seq), str(seq + 9)) != kinesis_key(str(seq + 1), str(seq + 9))


def test_keys_of_a_shard_sort_in_position_order() -> None:
    rnd = random.Random(3)
    bounds = sorted(rnd.sample(range(10**6), 200))
    objects = [(int(KINESIS_SEQ) + a, int(KINESIS_SEQ) + b - 1) for a, b in itertools.pairwise(bounds)]
    keys = [kinesis_key(str(first), str(last)) for first, last in objects]
    assert sorted(keys) == keys
    kafka = compile_key_template()
    offsets = [kafka.key(stream="t", shard=0, first_position=o, last_position=o + 9) for o in (5, 95, 1000, 10**12)]
    assert sorted(offsets) == offsets


def test_key_components_are_sanitized() -> None:
    keys = compile_key_template()
    key = keys.key(stream="my stream/x", shard="..", first_position=1, last_position=2, extension=".avro")
    assert key == "my%20stream%2Fx/%2E%2E/00000000000000000001-00000000000000000002.avro"
    with pytest.raises(ValueError, match="stream must not be empty"):
        keys.key(stream="", shard=0, first_position=1, last_position=2)
    with pytest.raises(ValueError, match="1024 bytes"):
        keys.key(stream="s" * 1000, shard=0, first_position=1, last_position=2)
    with pytest.raises(ValueError, match="must end with '/'"):
        keys.key(stream="s", shard=0, first_position=1, last_position=2, partition="dt=x")


@pytest.mark.parametrize(
    ("template", "prefix", "message"),
    [
        ("{prefix}{stream}/{shard}/{first_position}-{last}", "", r"unknown placeholder \{last\}.*allowed: \{prefix\}"),
        ("{stream}/{shard}/{first_position}", "", r"lacks \{last_position\}"),
        ("{prefix}{partition}{first_position}-{last_position}", "", r"lacks \{stream\}, \{shard\}"),
        ("{stream}/{shard:>5}/{first_position}-{last_position}", "", "takes no format"),
        ("{stream!r}/{shard}/{first_position}-{last_position}", "", "conversion"),
        ("{prefix}/{stream}/{shard}/{first_position}-{last_position}", "", "empty segment"),
        ("{prefix}{stream}/{shard}/{first_position}-{last_position}", "raw", "must be empty or end with '/'"),
        ("{prefix}{stream}/{shard}/{first_position}-{last_position}", "/raw/", "leading '/'"),
        ("{prefix}{stream}/{shard}/{first_position}-{last_position", "", "key template"),
    ],
)
def test_key_template_errors(template: str, prefix: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_key_template(template, prefix=prefix)


# --------------------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("2025-11-26T14:00", "2025-11-26T14%3A00"),
        ("a/b=c", "a%2Fb%3Dc"),
        ("100%", "100%25"),
        ("x y#z?", "x%20y%23z%3F"),
        ("new\nline", "new%0Aline"),
        ("café", "café"),
        ("", HIVE_DEFAULT_PARTITION),
        (None, HIVE_DEFAULT_PARTITION),
        (True, "true"),
        (42, "42"),
    ],
)
def test_hive_escape(value: Any, escaped: str) -> None:
    assert hive_escape(value) == escaped


# ------------------------------------------------------------------------------------- partitions


def test_default_partition_is_event_time_in_utc() -> None:
    partitioner = compile_partitioner()
    assert partitioner.render(T0) == "dt=2025-11-26/hour=14/"
    assert partitioner.render(T0 - 1) == "dt=2025-11-26/hour=13/"
    missing = f"dt={HIVE_DEFAULT_PARTITION}/hour={HIVE_DEFAULT_PARTITION}/"
    assert partitioner.render(None) == partitioner.render(MISSING_EVENT_TIME) == partitioner.render(-5) == missing


def test_group_matches_render_record_by_record() -> None:
    partitioner = compile_partitioner(
        "dt={event_time:%Y-%m-%d}/hour={event_time:%H}/min={event_time:%H:%M}/"
        "type={field.type}/country={field.user.country}/"
    )
    rnd = random.Random(5)
    n = 3000
    times = np.array([T0 + rnd.randrange(-3 * HOUR, 30 * HOUR) for _ in range(n)], dtype=np.int64)
    times[::97] = MISSING_EVENT_TIME
    times[1::89] = np.iinfo(np.int64).min  # any negative time counts as missing
    times[5] = 2**62  # far outside datetime's range
    kinds: list[Any] = ["click", "view", "a:b", None, "", True, 1, "1", 1.0]
    values: list[Any] = [
        {"type": rnd.choice(kinds), "user": rnd.choice([{"country": "FR"}, {"country": None}, {}, "x"])}
        for _ in range(n)
    ]
    values[7] = "not an object"
    groups = partitioner.group(times, values)
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(n))
    for name, indexes in groups.items():
        assert np.all(np.diff(indexes) > 0), "indexes ascend, so each group keeps position order"
        for i in indexes.tolist():
            assert partitioner.render(int(times[i]), values[i]) == name
    assert f"dt={HIVE_DEFAULT_PARTITION}/" in partitioner.render(int(times[5]), values[5])


def test_buckets_that_render_alike_are_merged() -> None:
    partitioner = compile_partitioner("hour={event_time:%H}/")
    times = np.array([T0, T0 + 24 * HOUR, T0 + HOUR, T0 + 48 * HOUR], dtype=np.int64)
    groups = partitioner.group(times)
    assert {k: v.tolist() for k, v in groups.items()} == {"hour=14/": [0, 1, 3], "hour=15/": [2]}


def test_group_edge_cases() -> None:
    assert compile_partitioner().group(np.array([], dtype=np.int64)) == {}
    static = compile_partitioner("source=web/")
    assert static.group(values=[{}, {}])["source=web/"].tolist() == [0, 1]
    assert compile_partitioner("").group(np.array([T0, T0]))[""].tolist() == [0, 1]
    with pytest.raises(ValueError, match="pass event_time_ms"):
        compile_partitioner().group(values=[{}])
    with pytest.raises(ValueError, match="pass decoded values"):
        compile_partitioner("t={field.type}/").group(np.array([T0]))
    with pytest.raises(ValueError, match="differ in length"):
        compile_partitioner("d={event_time:%d}/t={field.type}/").group(np.array([T0]), [{}, {}])


def test_partitioner_reports_what_it_needs() -> None:
    partitioner = compile_partitioner("dt={event_time:%Y-%m-%d}/t={field.type}/c={field.user.country}/")
    assert partitioner.uses_event_time
    assert partitioner.fields == ("type", "user.country")
    assert not compile_partitioner("t={field.type}/").uses_event_time


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("dt={evnt_time:%Y}/", r"unknown placeholder \{evnt_time\}.*allowed: \{event_time:<strftime format>\}"),
        ("t={type}/", r"unknown placeholder \{type\}"),
        ("t={field.}/", r"unknown placeholder \{field\.\}"),
        ("dt={event_time}/", "strftime format"),
        ("dt={event_time:%Y/%m}/", "one placeholder per segment"),
        ("t={field.type:>3}/", "takes no format"),
        ("t={field.type!s}/", "conversion"),
        ("dt={event_time:%Y}", "must end with '/'"),
        ("dt={event_time:%Y}//", "empty path segment"),
        ("{event_time:%Y}/", "not Hive-style"),
        ("DT={event_time:%Y}/", "not Hive-style"),
        ("{field.k}={field.v}/", "not Hive-style"),
        ("dt={event_time:%Y/", "partition template"),
    ],
)
def test_partition_template_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_partitioner(template)


def test_non_hive_layouts_need_an_explicit_opt_out() -> None:
    partitioner = compile_partitioner("{event_time:%Y}/{event_time:%m}/", hive=False)
    assert partitioner.render(T0) == "2025/11/"


@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segments_from_values_are_escaped_without_hive(value: str) -> None:
    # "." and ".." segments are rewritten by HTTP clients and path libraries (safe/prefix/../file would
    # land outside the prefix); they are escaped as stream and shard names are.
    partitioner = compile_partitioner("{field.region}/{field.kind}/", hive=False)
    values = [{"region": value, "kind": value}, {"region": "eu", "kind": value + value}]
    rendered = partitioner.render(value={"region": value, "kind": value})
    assert rendered == f"{value.replace('.', '%2E')}/{value.replace('.', '%2E')}/"
    groups = partitioner.group(values=values)
    assert set(groups) == {rendered, partitioner.render(value=values[1])}
    keys = compile_key_template(prefix="safe/prefix/")
    for partition in groups:
        key = keys.key(stream="s", shard="0", first_position=1, last_position=2, partition=partition)
        assert key.startswith("safe/prefix/")
        assert not {".", ".."} & set(key.split("/")), key


def test_dot_segments_made_of_several_placeholders_are_escaped() -> None:
    partitioner = compile_partitioner("{field.a}{field.b}/", hive=False)
    assert partitioner.render(value={"a": ".", "b": "."}) == "%2E%2E/"
    assert partitioner.render(value={"a": ".", "b": "x"}) == ".x/"  # an ordinary name with a dot


def test_dot_segments_written_in_the_template_are_rejected() -> None:
    with pytest.raises(TemplateError, match=r"'\.' and '\.\.' are not allowed"):
        compile_partitioner("../{field.a}/", hive=False)


def test_dot_values_stay_readable_in_hive_segments() -> None:
    partitioner = compile_partitioner("region={field.region}/")
    assert partitioner.render(value={"region": ".."}) == "region=../"


# ---------------------------------------------------------------------------------- discoverability

SCHEMA = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "long"},
        {
            "name": "meta",
            "type": {"type": "record", "name": "Meta", "fields": [{"name": "source", "type": ["null", "string"]}]},
        },
    ],
}
SOURCES = ["web:eu", "app/ios x", None]  # values that need Hive escaping, and a null


def write_lake(root: Path, fmt: str) -> None:
    """Objects laid out exactly as the sink would: one per (Hive partition, shard) group."""
    keys = compile_key_template(prefix="events/")
    partitioner = compile_partitioner("dt={event_time:%Y-%m-%d}/source={field.meta.source}/")
    values = [{"id": i, "meta": {"source": SOURCES[i % 3]}} for i in range(60)]
    times = T0 + np.arange(60, dtype=np.int64) * HOUR
    for shard, half in enumerate((slice(0, 30), slice(30, 60))):
        for partition, indexes in partitioner.group(times[half], values[half]).items():
            writer = make_writer(
                fmt, compression="gzip" if fmt == "ndjson" else None, avro_schema=SCHEMA if fmt == "parquet" else None
            )
            writer.write_values([values[half][i] for i in indexes.tolist()])
            first, last = (half.start + int(indexes[0]), half.start + int(indexes[-1]))
            key = keys.key(
                stream="orders",
                shard=f"shardId-00000000000{shard}",
                first_position=first,
                last_position=last,
                partition=partition,
                extension=writer.extension,
            )
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(writer.finish())


def query(sql: str) -> list[tuple[Any, ...]]:
    relation = duckdb.sql(sql)
    assert relation is not None
    return relation.fetchall()


def expected_counts() -> list[tuple[Any, int]]:
    return [("app/ios x", 20), ("web:eu", 20), (None, 20)]


@pytest.mark.parametrize("fmt", ["ndjson", "parquet"])
def test_duckdb_discovers_the_partitions(tmp_path: Path, fmt: str) -> None:
    write_lake(tmp_path, fmt)
    reader = "read_json" if fmt == "ndjson" else "read_parquet"
    pattern = tmp_path / "events" / "**" / ("*.ndjson.gz" if fmt == "ndjson" else "*.parquet")
    lake = f"{reader}('{pattern}', hive_partitioning=true)"
    assert query(f"select source, count(*) from {lake} group by source order by source") == expected_counts()
    days = query(f"select distinct dt::varchar from {lake} order by 1")
    assert days == [("2025-11-26",), ("2025-11-27",), ("2025-11-28",), ("2025-11-29",)]  # 60 h from 14:00
    assert query(f"select count(*) from {lake} where source is distinct from meta.source") == [(0,)]


@pytest.mark.parametrize("fmt", ["ndjson", "parquet"])
def test_pyarrow_dataset_discovers_the_partitions(tmp_path: Path, fmt: str) -> None:
    write_lake(tmp_path, fmt)
    partitioning = ds.partitioning(pa.schema([("dt", pa.string()), ("source", pa.string())]), flavor="hive")
    columns = pa.schema([("id", pa.int64()), ("meta", pa.struct([("source", pa.string())]))])
    dataset = ds.dataset(
        tmp_path / "events",
        format="json" if fmt == "ndjson" else "parquet",
        partitioning=partitioning,
        schema=pa.unify_schemas([columns, partitioning.schema]),
    )
    table = dataset.to_table()
    assert table.num_rows == 60
    rows = table.to_pylist()
    assert all(r["source"] == r["meta"]["source"] for r in rows)
    assert sorted({r["dt"] for r in rows}) == ["2025-11-26", "2025-11-27", "2025-11-28", "2025-11-29"]
