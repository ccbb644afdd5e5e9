"""Decode a 10,000-record GetRecords body: botocore's parser vs decode_get_records, same run.

    .venv/bin/python benchmarks/kinesis_decode.py [--json] [--repeat N]

Lines printed (records/s, best of N runs, one core):
  plain       botocore's JSON parser on the body vs decode_get_records (+ an orjson variant of
              ours, kept as the check on why decode.py uses msgspec)
  fast path   deaggregate() of that batch (no record aggregated): its cost as a share of decoding
  kpl         100 aggregated records x 100 user records: botocore + aws-kinesis-agg's
              deaggregator vs decode_get_records + deaggregate (user records/s)
Absolute figures drift between runs and machines; the ratios are the result.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections.abc import Callable
from itertools import repeat
from operator import itemgetter
from typing import Any

import aws_kinesis_agg.aggregator as kpl_aggregator
import aws_kinesis_agg.deaggregator as kpl_deaggregator
import botocore.parsers
import botocore.session
import numpy as np
import orjson
import pybase64

from streamkit.connectors.kinesis.decode import deaggregate, decode_get_records

RECORDS = 10_000
_WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "sigma", "omega"]


def _payload(rng: random.Random, i: int) -> bytes:
    """A ~1 KB JSON event (mean ~920 B), like PERF_FACTS.md's workload."""
    event = {
        "id": i,
        "ts": 1_764_165_600_000 + i,
        "user": f"user-{rng.randrange(100_000):06d}",
        "status": rng.choice(["ok", "ok", "ok", "err"]),
        "amount": round(rng.uniform(0, 1000), 2),
        "tags": rng.sample(_WORDS, 4),
        "message": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(105, 170))),
    }
    return orjson.dumps(event)


def _body(payloads: list[bytes], partition_keys: list[str]) -> bytes:
    """A GetRecords body as the service writes it (Java-style float exponent for timestamps)."""
    parts = []
    seq0 = 49_659_234_410_876_543_210_987_654_321_098_765_432_101_234_567_890_123_456  # 56 digits
    for i, (data, pk) in enumerate(zip(payloads, partition_keys, strict=True)):
        ms = 1_764_165_600_000 + i // 3
        seq = seq0 + i * 8_796_093_022_208
        parts.append(
            f'{{"SequenceNumber":"{seq}","ApproximateArrivalTimestamp":{ms / 10**12!r}E9,'
            f'"Data":"{pybase64.b64encode(data).decode()}","PartitionKey":"{pk}"}}'
        )
    iterator = "AAAAAAAAAAH" + "x" * 250
    return f'{{"Records":[{",".join(parts)}],"NextShardIterator":"{iterator}","MillisBehindLatest":0}}'.encode()


def _best(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _botocore_parser() -> Callable[[bytes], dict[str, Any]]:
    model = botocore.session.get_session().get_service_model("kinesis")
    shape = model.operation_model("GetRecords").output_shape
    parser = botocore.parsers.create_parser("json")

    def parse(body: bytes) -> dict[str, Any]:
        result: dict[str, Any] = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
        return result

    return parse


def _orjson_variant(body: bytes) -> tuple[list[bytes], list[str], list[str], Any]:
    """The same columns via orjson dicts: the alternative decode.py was measured against."""
    records = orjson.loads(body)["Records"]
    payloads = list(map(pybase64.b64decode, map(itemgetter("Data"), records), repeat(None), repeat(True)))
    seconds = np.fromiter(map(itemgetter("ApproximateArrivalTimestamp"), records), np.float64, len(records))
    return (
        payloads,
        list(map(itemgetter("SequenceNumber"), records)),
        list(map(itemgetter("PartitionKey"), records)),
        np.rint(seconds * 1000.0).astype(np.int64),
    )


def run(runs: int) -> dict[str, float]:
    rng = random.Random(42)
    payloads = [_payload(rng, i) for i in range(RECORDS)]
    keys = [f"device-{rng.randrange(5000)}" for _ in range(RECORDS)]
    plain = _body(payloads, keys)
    botocore_parse = _botocore_parser()

    # KPL: 100 aggregated records of 100 ~1 KB user records each.
    blobs = []
    for a in range(100):
        aggregator = kpl_aggregator.RecordAggregator()
        for u in range(100):
            aggregator.add_user_record(keys[a * 100 + u], payloads[a * 100 + u])
        blobs.append(aggregator.clear_and_get().get_contents()[2])
    aggregated = _body(blobs, [keys[a * 100] for a in range(100)])
    users = len(deaggregate(decode_get_records(aggregated)))
    assert users == RECORDS

    def reference_kpl() -> int:
        records = botocore_parse(aggregated)["Records"]
        return sum(1 for _ in kpl_deaggregator.iter_deaggregate_records(records, data_format="Boto3"))

    t_boto = _best(lambda: botocore_parse(plain), max(2, runs // 3))
    t_ours = _best(lambda: decode_get_records(plain), runs)
    t_orjson = _best(lambda: _orjson_variant(plain), runs)
    # A range just inside the key space, so the check runs (the full space skips it).
    shard_range = (1, 2**128 - 2)
    decoded = decode_get_records(plain)
    t_fast = _best(lambda: deaggregate(decoded, shard_range), runs * 5)
    t_ref_kpl = _best(reference_kpl, max(2, runs // 3))
    t_kpl = _best(lambda: deaggregate(decode_get_records(aggregated)), runs)
    t_kpl_range = _best(lambda: deaggregate(decode_get_records(aggregated), shard_range), runs)

    return {
        "records": RECORDS,
        "body_mib": round(len(plain) / 2**20, 2),
        "botocore_rps": RECORDS / t_boto,
        "decode_rps": RECORDS / t_ours,
        "decode_vs_botocore": t_boto / t_ours,
        "orjson_variant_rps": RECORDS / t_orjson,
        "decode_vs_orjson_variant": t_orjson / t_ours,
        "fast_path_us": t_fast * 1e6,
        "fast_path_pct_of_decode": 100 * t_fast / t_ours,
        "kpl_reference_rps": users / t_ref_kpl,
        "kpl_rps": users / t_kpl,
        "kpl_vs_reference": t_ref_kpl / t_kpl,
        "kpl_with_hash_range_rps": users / t_kpl_range,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--repeat", type=int, default=9, help="runs per measurement; the best is kept")
    args = parser.parse_args()
    r = run(args.repeat)
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in r.items()}))
        return
    print(f"GetRecords body: {r['records']:.0f} records, {r['body_mib']} MiB; records/s, best of {args.repeat}")
    print(
        f"plain      botocore {r['botocore_rps']:>10,.0f}   decode_get_records {r['decode_rps']:>10,.0f}"
        f"   x{r['decode_vs_botocore']:.1f}   (orjson variant {r['orjson_variant_rps']:,.0f},"
        f" ours x{r['decode_vs_orjson_variant']:.2f})"
    )
    print(
        f"fast path  deaggregate() of the same batch (no aggregated records): {r['fast_path_us']:,.0f} us"
        f" = {r['fast_path_pct_of_decode']:.1f}% of decode_get_records"
    )
    print(
        f"kpl        botocore+aws-kinesis-agg {r['kpl_reference_rps']:>10,.0f}"
        f"   decode+deaggregate {r['kpl_rps']:>10,.0f}   x{r['kpl_vs_reference']:.1f}"
        f"   (with shard hash range {r['kpl_with_hash_range_rps']:,.0f})   user records/s"
    )


if __name__ == "__main__":
    main()
