"""The local stand-ins work over their real protocols, listen on loopback only, and stop when told."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from streamkit.devtools.localstack import (
    Dynalite,
    InProcessMotoServer,
    Kinesalite,
    KinesisLocal,
    LocalServer,
    LocalStack,
    LocalStackError,
    MotoServer,
    ServerStartError,
    TansuBroker,
)
from streamkit.devtools.localstack._process import Launch, spawn_on_ports
from tests.integration.kinesis_helpers import wait_active

REGION = "us-east-1"
FORCE_LOOPBACK_JS = Path(__file__).resolve().parents[2] / "streamkit" / "devtools" / "localstack" / "force_loopback.js"


def aws(service: str, endpoint_url: str) -> Any:
    config = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION, config=config)


# --- moto ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_moto_s3_put_get_and_dynamodb_table(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    s3 = aws("s3", moto_server.endpoint_url)
    s3.create_bucket(Bucket="bucket")
    s3.put_object(Bucket="bucket", Key="a/b.json", Body=b'{"x": 1}')
    assert s3.get_object(Bucket="bucket", Key="a/b.json")["Body"].read() == b'{"x": 1}'

    ddb = aws("dynamodb", moto_server.endpoint_url)
    ddb.create_table(
        TableName="leases",
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    item = {"leaseKey": {"S": "shardId-000000000000"}, "leaseCounter": {"N": "1"}}
    ddb.put_item(TableName="leases", Item=item, ConditionExpression="attribute_not_exists(leaseKey)")
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(TableName="leases", Item=item, ConditionExpression="attribute_not_exists(leaseKey)")


@pytest.mark.timeout(30)
def test_moto_reset_drops_everything(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    s3 = aws("s3", moto_server.endpoint_url)
    s3.create_bucket(Bucket="to-be-reset")
    moto_server.reset()
    assert s3.list_buckets()["Buckets"] == []


@pytest.mark.timeout(30)
def test_in_process_moto(aws_env: dict[str, str]) -> None:
    with InProcessMotoServer.start() as moto:
        s3 = aws("s3", moto.endpoint_url)
        s3.create_bucket(Bucket="in-process")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["in-process"]


# --- kinesalite ------------------------------------------------------------------------------------------


def _shard_for(key: str, shards: list[dict[str, Any]]) -> str:
    hashed = int(hashlib.md5(key.encode()).hexdigest(), 16)
    for shard in shards:
        rng = shard["HashKeyRange"]
        if int(rng["StartingHashKey"]) <= hashed <= int(rng["EndingHashKey"]):
            return str(shard["ShardId"])
    raise AssertionError(f"no shard owns {key}")


@pytest.mark.timeout(30)
def test_kinesalite_create_put_get(kinesalite: Kinesalite, aws_env: dict[str, str]) -> None:
    kinesis = aws("kinesis", kinesalite.endpoint_url)
    kinesis.create_stream(StreamName="orders", ShardCount=2)
    wait_active(kinesis, "orders", timeout=10)
    sent = {f"key-{i}": f"payload-{i}".encode() for i in range(20)}
    result = kinesis.put_records(StreamName="orders", Records=[{"PartitionKey": k, "Data": v} for k, v in sent.items()])
    assert result["FailedRecordCount"] == 0

    shards = kinesis.list_shards(StreamName="orders")["Shards"]
    assert len(shards) == 2
    received: dict[str, tuple[bytes, str]] = {}
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName="orders", ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for record in kinesis.get_records(ShardIterator=iterator, Limit=100)["Records"]:
            received[record["PartitionKey"]] = (record["Data"], shard["ShardId"])
    assert {k: data for k, (data, _) in received.items()} == sent
    assert all(shard_id == _shard_for(k, shards) for k, (_, shard_id) in received.items())


@pytest.mark.timeout(30)
def test_kinesalite_reset_deletes_streams(kinesalite: Kinesalite, aws_env: dict[str, str]) -> None:
    kinesis = aws("kinesis", kinesalite.endpoint_url)
    kinesis.create_stream(StreamName="orders", ShardCount=1)  # same name as above: the fixture reset
    kinesalite.reset()
    assert kinesis.list_streams()["StreamNames"] == []


# --- kinesis-local ---------------------------------------------------------------------------------------


@pytest.mark.timeout(45)
def test_kinesis_local_split_closes_parent_with_child_shards(
    kinesis_local: KinesisLocal, aws_env: dict[str, str]
) -> None:
    kinesis = aws("kinesis", kinesis_local.endpoint_url)
    kinesis.create_stream(StreamName="split-me", ShardCount=1)
    wait_active(kinesis, "split-me", timeout=10)
    kinesis.put_record(StreamName="split-me", PartitionKey="a", Data=b"before-split")
    (parent,) = kinesis.list_shards(StreamName="split-me")["Shards"]
    iterator = kinesis.get_shard_iterator(
        StreamName="split-me", ShardId=parent["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]

    middle = (int(parent["HashKeyRange"]["EndingHashKey"]) + 1) // 2
    kinesis.split_shard(StreamName="split-me", ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle))
    wait_active(kinesis, "split-me", timeout=10)

    shards = {s["ShardId"]: s for s in kinesis.list_shards(StreamName="split-me")["Shards"]}
    children = sorted(sid for sid, s in shards.items() if s.get("ParentShardId") == parent["ShardId"])
    assert len(children) == 2
    assert "EndingSequenceNumber" in shards[parent["ShardId"]]["SequenceNumberRange"]

    data: list[bytes] = []
    for _ in range(10):  # the closed parent ends within a few reads
        page = kinesis.get_records(ShardIterator=iterator)
        data.extend(r["Data"] for r in page["Records"])
        iterator = page.get("NextShardIterator")
        if iterator is None:
            break
    assert iterator is None, "a closed parent shard must end (no NextShardIterator)"
    assert data == [b"before-split"]
    assert sorted(c["ShardId"] for c in page["ChildShards"]) == children


# --- Tansu -----------------------------------------------------------------------------------------------


@pytest.mark.timeout(45)
def test_tansu_produce_consume(tansu: TansuBroker) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": tansu.bootstrap_servers})
    assert admin.list_topics(timeout=5).brokers  # metadata answers, broker advertised on loopback
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=10)

    producer = Producer({"bootstrap.servers": tansu.bootstrap_servers, "enable.idempotence": True})
    for i in range(5):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("n", str(i).encode())])
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": tansu.bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,  # the default (45 s) makes Tansu's first join wait ~23 s
        }
    )
    try:
        consumer.subscribe([topic])
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(values) < 5 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                value = message.value()
                assert message.error() is None and value is not None, message.error()
                values.append(value)
    finally:
        consumer.close()
    assert values == [f"v{i}".encode() for i in range(5)]


# --- loopback only ---------------------------------------------------------------------------------------


def _decode_proc_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that the process holds (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A = LISTEN
                    address, port = local.split(":")
                    found.append((_decode_proc_address(address), int(port, 16)))
    return found


def non_loopback_ipv4() -> str | None:
    for probe in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((probe, 9))  # UDP connect sends nothing; it only picks a route
            except OSError:
                continue
            address = str(sock.getsockname()[0])
            if not address.startswith("127."):
                return address
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "fixture", ["moto_session", "kinesalite_session", "kinesis_local_session", "dynalite_session", "tansu"]
)
def test_server_listens_on_loopback_only(fixture: str, request: pytest.FixtureRequest) -> None:
    server: LocalServer = request.getfixturevalue(fixture)
    sockets = listening_sockets(server.pid)
    assert ("127.0.0.1", server.port) in sockets
    assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets

    other = non_loopback_ipv4()
    if other is not None:
        for _, port in sockets:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=1).close()


@pytest.mark.timeout(15)
def test_force_loopback_rewrites_every_listen_form(tmp_path: Path) -> None:
    script = tmp_path / "listen.js"
    script.write_text(
        textwrap.dedent(
            """
            const net = require('net'), http = require('http');
            const forms = [
              (s, cb) => s.listen(0, '0.0.0.0', cb), (s, cb) => s.listen(0, cb), (s, cb) => s.listen(cb),
              (s, cb) => s.listen({port: 0, host: '::'}, cb), (s, cb) => s.listen('0', '0.0.0.0', 511, cb),
              (s, cb) => s.listen({port: 0}, cb),
            ];
            let left = forms.length;
            for (const form of forms) {
              const server = form === forms[0] ? net.createServer() : http.createServer();
              form(server, () => {
                console.log(server.address().address);
                server.close();
                if (--left === 0) process.exit(0);
              });
            }
            """
        )
    )
    out = subprocess.run(
        ["node", "-r", str(FORCE_LOOPBACK_JS), str(script)], capture_output=True, text=True, timeout=10
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["127.0.0.1"] * 6


# --- lifecycle -------------------------------------------------------------------------------------------


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", [TansuBroker, Kinesalite, Dynalite])
def test_stop_ends_the_pid_and_frees_the_port(kind: type[TansuBroker] | type[Kinesalite] | type[Dynalite]) -> None:
    server = kind.start()
    pid, port, log_dir = server.pid, server.port, server.log_path.parent
    assert not _pid_gone(pid)
    server.stop()
    assert _pid_gone(pid)
    assert not server.is_running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not log_dir.exists()
    server.stop()  # idempotent


@pytest.mark.timeout(30)
def test_stop_escalates_to_sigkill_for_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    marker = tmp_path / "ignoring-sigterm"
    code = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    )

    def build(ports: tuple[int, ...]) -> Launch:
        return Launch("stubborn", [sys.executable, "-c", code, str(marker)], ports, ready=marker.exists)

    server = LocalServer(spawn_on_ports(build, [None], timeout=10))
    began = time.monotonic()
    server.stop(timeout=0.5)
    assert _pid_gone(server.pid)
    assert 0.5 <= time.monotonic() - began < 3  # waited out the SIGTERM, then SIGKILL


@pytest.mark.timeout(30)
def test_atexit_stops_servers_left_running(tmp_path: Path) -> None:
    code = "from streamkit.devtools.localstack import TansuBroker; b = TansuBroker.start(); print(b.pid, b.log_path)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    pid_text, log_path = out.stdout.split()
    pid = int(pid_text)
    shutil.rmtree(Path(log_path).parent)  # the safety net keeps logs for a post-mortem
    deadline = time.monotonic() + 5
    while not _pid_gone(pid) and time.monotonic() < deadline:  # reparented to init, reaped there
        time.sleep(0.05)
    assert _pid_gone(pid)


@pytest.mark.timeout(30)
def test_start_error_names_the_server_and_its_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError) as error:
            TansuBroker.start(port=port, timeout=5)
    message = str(error.value)
    assert "tansu" in message and "log: " in message and "in use" in message.lower()
    log_path = Path(message.split("log: ")[1].split("\n")[0])
    assert log_path.is_file()  # kept after a failed start
    shutil.rmtree(log_path.parent)


def test_missing_node_modules_says_run_npm_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMKIT_NODE_MODULES", str(tmp_path))
    with pytest.raises(LocalStackError, match="npm ci"):
        Kinesalite.start()
    with pytest.raises(LocalStackError, match="npm ci"):
        KinesisLocal.start()


@pytest.mark.timeout(60)
def test_local_stack_starts_all_in_parallel_and_maps_endpoints() -> None:
    began = time.monotonic()
    with LocalStack.start(moto=True, kinesalite=True, kinesis_local=True, tansu=True) as stack:
        elapsed = time.monotonic() - began
        servers = stack.servers()
        assert len(servers) == 4 and all(s.is_running() for s in servers)
        assert stack.moto is not None and stack.kinesalite is not None
        endpoints = stack.aws_endpoints()
        assert endpoints["kinesis"] == stack.kinesalite.endpoint_url
        for service in ("dynamodb", "s3", "firehose", "timestream-write"):
            assert endpoints[service] == stack.moto.endpoint_url
        times = {type(s).__name__: round(s.startup_seconds, 3) for s in servers}
        print(f"\nLocalStack parallel start: {elapsed:.3f} s; each: {times}")
    assert not any(s.is_running() for s in servers)


@pytest.mark.timeout(60)
def test_startup_times() -> None:
    times = {}
    for kind in (MotoServer, Kinesalite, KinesisLocal, TansuBroker):
        with kind.start() as server:
            times[kind.__name__] = server.startup_seconds
    print("\nstart-up (spawn -> first successful probe): " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()))
    assert all(seconds < 15 for seconds in times.values()), times


def test_aws_env_uses_only_dummy_credentials(aws_env: dict[str, str]) -> None:
    session = boto3.Session()
    credentials = session.get_credentials()
    assert credentials is not None
    assert (credentials.access_key, credentials.secret_key) == ("testing", "testing")
    assert credentials.method == "env"
    assert session.region_name == REGION
    assert "AWS_PROFILE" not in os.environ
