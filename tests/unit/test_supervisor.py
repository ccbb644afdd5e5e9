"""The supervisor's pure parts: process shares, Prometheus merging, the shared checkpoint file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamkit.batch import Partition
from streamkit.checkpoint import FileCheckpointStore
from streamkit.config import AwsSettings
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.share import ProcessShare, process_share
from streamkit.supervisor import merge_prometheus, resolve_processes


def test_shares_cover_every_partition_exactly_once() -> None:
    shares = [ProcessShare(i, 3) for i in range(3)]
    for number in range(20):
        assert sum(share.owns(number) for share in shares) == 1
    assert all(ProcessShare().owns(n) for n in range(5))


def test_process_share_comes_from_the_environment_and_is_checked() -> None:
    assert process_share({}) == ProcessShare(0, 1)
    assert process_share({"STREAMKIT_PROCESS_INDEX": "1", "STREAMKIT_PROCESS_COUNT": "2"}) == ProcessShare(1, 2)
    with pytest.raises(ConfigError, match=r"not within 0\.\.1"):
        process_share({"STREAMKIT_PROCESS_INDEX": "2", "STREAMKIT_PROCESS_COUNT": "2"})
    with pytest.raises(ConfigError, match="expected integers"):
        process_share({"STREAMKIT_PROCESS_INDEX": "x", "STREAMKIT_PROCESS_COUNT": "2"})


def test_auto_is_the_cpu_count_and_numbers_pass_through() -> None:
    assert resolve_processes("auto") >= 1
    assert resolve_processes(3) == 3


def test_prometheus_texts_merge_per_family_with_a_process_label() -> None:
    child = (
        "# HELP streamkit_records_in_total Records read\n"
        "# TYPE streamkit_records_in_total counter\n"
        'streamkit_records_in_total{partition="a"} 5.0\n'
        "# HELP streamkit_leases_held Leases\n"
        "# TYPE streamkit_leases_held gauge\n"
        "streamkit_leases_held 2.0\n"
    )
    merged = merge_prometheus([("0", child), ("1", child.replace("5.0", "7.0"))]).splitlines()
    assert merged == [
        "# HELP streamkit_records_in_total Records read",
        "# TYPE streamkit_records_in_total counter",
        'streamkit_records_in_total{process="0",partition="a"} 5.0',
        'streamkit_records_in_total{process="1",partition="a"} 7.0',
        "# HELP streamkit_leases_held Leases",
        "# TYPE streamkit_leases_held gauge",
        'streamkit_leases_held{process="0"} 2.0',
        'streamkit_leases_held{process="1"} 2.0',
    ]
    assert merge_prometheus([]) == ""


async def test_two_stores_on_one_file_keep_each_others_checkpoints(tmp_path: Path) -> None:
    env = PluginEnv("supervisor", AwsSettings(), tmp_path, "checkpoint")
    options = FileCheckpointStore.Options(path="checkpoints.json")
    first, second = FileCheckpointStore(options, env), FileCheckpointStore(options, env)
    await asyncio.gather(first.start(), second.start())
    for i in range(20):
        await asyncio.gather(first.save(Partition("gen", "0"), str(i)), second.save(Partition("gen", "1"), str(i * 10)))
    reread = FileCheckpointStore(options, env)
    await reread.start()
    assert await reread.load(Partition("gen", "0")) == "19"
    assert await reread.load(Partition("gen", "1")) == "190"
