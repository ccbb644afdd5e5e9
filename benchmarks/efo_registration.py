"""Enhanced fan-out start-up over several streams: registering every stream's consumer concurrently (what
``FanOut.start`` does) against one stream after another (the baseline), same run, same emulator.

A consumer takes a while to become ACTIVE after RegisterStreamConsumer (seconds on AWS); kinesis-local is
started with that delay set to ``--register-ms``, so start-up time is dominated by it, as on AWS. Each
round registers a new consumer name on every stream, for both ways, alternating which goes first.

Usage: python benchmarks/efo_registration.py [--streams N] [--register-ms MS] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from contextlib import AsyncExitStack
from typing import Any

from streamkit.config import AwsSettings
from streamkit.connectors.kinesis.client import KinesisClient
from streamkit.connectors.kinesis.efo import FanOut, FanOutOptions
from streamkit.connectors.kinesis.efo_consumer import ensure_consumer
from streamkit.connectors.kinesis.streams import ConfiguredStream, describe_stream
from streamkit.devtools.localstack.kinesis import KinesisLocal
from streamkit.log import configure as configure_logs


async def concurrent(aws: AwsSettings, streams: list[ConfiguredStream], name: str) -> float:
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        await FanOut.start(stack, aws, streams, FanOutOptions(consumer_name=name), name)
    return time.perf_counter() - started


async def one_by_one(streams: list[ConfiguredStream], name: str) -> float:
    started = time.perf_counter()
    for stream in streams:
        await ensure_consumer(stream.client.client, stream.arn, name, timeout_s=300)
    return time.perf_counter() - started


async def measure(endpoint: str, streams_count: int, rounds: int) -> dict[str, Any]:
    aws = AwsSettings(region="us-east-1", endpoints={"kinesis": endpoint})
    async with KinesisClient(aws) as client:
        names = [f"bench-{i}" for i in range(streams_count)]
        for start in range(0, len(names), 5):  # at most 5 streams CREATING at once (as on AWS)
            for name in names[start : start + 5]:
                await client.client.create_stream(StreamName=name, ShardCount=1)
            for name in names[start : start + 5]:
                await client.client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
        streams = [await describe_stream(client, name, multi_stream=True) for name in names]
        together: list[float] = []
        apart: list[float] = []
        for r in range(rounds):
            ways = [("c", together), ("s", apart)] if r % 2 == 0 else [("s", apart), ("c", together)]
            for way, out in ways:
                name = f"app-{r}-{way}"
                out.append(await concurrent(aws, streams, name) if way == "c" else await one_by_one(streams, name))
    return {
        "streams": streams_count,
        "rounds": rounds,
        "concurrent_s": statistics.median(together),
        "one_by_one_s": statistics.median(apart),
        "speedup": statistics.median(apart) / statistics.median(together),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--register-ms", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_logs(level="WARNING")  # one "registered" line per stream and round would bury the figures
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    # The delay applies to every kinesis-mock transition: streams are created once, before timing starts.
    with KinesisLocal.start(stream_transition_ms=args.register_ms) as server:
        result = asyncio.run(measure(server.endpoint_url, args.streams, args.rounds))
    result["register_ms"] = args.register_ms
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['streams']} streams, consumer ACTIVE {args.register_ms} ms after registration "
        f"(median of {result['rounds']} rounds):"
    )
    print(f"  concurrent (FanOut.start)   {result['concurrent_s']:6.2f} s")
    print(f"  one by one (baseline)       {result['one_by_one_s']:6.2f} s")
    print(f"  speed-up                    {result['speedup']:6.2f}x")


if __name__ == "__main__":
    main()
