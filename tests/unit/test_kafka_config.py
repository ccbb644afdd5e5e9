"""The kafka source's configuration: validation with key paths, and the librdkafka settings built from it.

Real MSK IAM, SCRAM and TLS handshakes cannot be tested here (no MSK, and Tansu speaks plaintext only):
these tests stop at the settings handed to librdkafka, and at an IAM token signed with dummy credentials.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from streamkit.build import build_pipeline
from streamkit.config import parse_config
from streamkit.connectors.kafka.auth import IamTokenProvider
from streamkit.connectors.kafka.options import consumer_config
from streamkit.connectors.kafka.source import KafkaSource
from streamkit.errors import ConfigError
from streamkit.redact import redacted


def source(tmp_path: Path | None = None, **section: Any) -> KafkaSource:
    data: dict[str, Any] = {
        "name": "orders",
        "source": {
            "type": "kafka",
            "bootstrap_servers": "b-1:9098,b-2:9098",
            "topics": ["orders"],
            "group_id": "orders-ingest",
            **section,
        },
        "sinks": [{"type": "memory"}],
    }
    built = build_pipeline(parse_config(data, base_dir=tmp_path))
    assert isinstance(built.source, KafkaSource)
    return built.source


def error_of(**section: Any) -> str:
    with pytest.raises(ConfigError) as info:
        source(**section)
    return str(info.value)


def settings(src: KafkaSource) -> dict[str, Any]:
    config: dict[str, Any] = consumer_config(src.options, src.auth, src.client_id)
    return config


def test_defaults_commit_manually_with_cooperative_assignment_and_fast_fetch_backoff() -> None:
    config = settings(source())
    assert config["enable.auto.commit"] is False and config["enable.auto.offset.store"] is False
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["fetch.queue.backoff.ms"] == 10
    assert config["auto.offset.reset"] == "earliest"
    assert config["group.id"] == "orders-ingest" and config["client.id"] == "streamkit-orders"
    assert config["bootstrap.servers"] == "b-1:9098,b-2:9098"
    assert config["security.protocol"] == "PLAINTEXT"


def test_iam_uses_sasl_ssl_oauthbearer_with_a_token_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    config = settings(source(auth={"mechanism": "iam"}))
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "OAUTHBEARER"
    assert isinstance(config["oauth_cb"], IamTokenProvider) and config["oauth_cb"].region == "eu-west-1"
    assert redacted(config)["oauth_cb"] == "***"


def test_the_iam_token_is_a_presigned_kafka_cluster_connect_url(aws_env: dict[str, str]) -> None:
    token, expiry = IamTokenProvider("us-east-1")("")
    url = urlparse(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    query = parse_qs(url.query)
    assert url.netloc == "kafka.us-east-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("testing/")
    assert time.time() < expiry < time.time() + 3600
    assert "testing" not in repr(IamTokenProvider("us-east-1"))


def test_iam_without_a_region_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert "source.auth.region: required with mechanism 'iam'" in error_of(auth={"mechanism": "iam"})


def test_scram_takes_username_and_password_and_they_are_redacted() -> None:
    config = settings(source(auth={"mechanism": "scram-sha-512", "username": "svc", "password": "s3cret"}))
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "svc"
    assert "s3cret" not in str(redacted(config))
    assert "source.auth.password: required" in error_of(auth={"mechanism": "scram-sha-512", "username": "svc"})


def test_mtls_takes_certificate_and_key_and_checks_they_are_readable_at_start(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    auth = {"mechanism": "mtls", "ca_location": "ca.pem", "certificate_location": "client.pem",
            "key_location": "client.key", "key_password": "pw"}  # fmt: skip
    src = source(tmp_path, auth=auth)
    config = settings(src)
    assert config["security.protocol"] == "SSL" and config["ssl.key.password"] == "pw"
    assert "source.auth.key_location" in error_of(auth={**auth, "key_location": None})
    with pytest.raises(ConfigError, match=r"source\.auth\.key_location: cannot read .*client\.key"):
        from streamkit.connectors.kafka.auth import check_files

        check_files(src.auth, "source", src._resolve)


@pytest.mark.parametrize(
    ("auth", "key"),
    [
        ({"mechanism": "iam", "region": "us-east-1", "password": "x"}, "source.auth.password"),
        ({"mechanism": "plaintext", "ca_location": "ca.pem"}, "source.auth.ca_location"),
        (
            {"mechanism": "mtls", "certificate_location": "c", "key_location": "k", "username": "u"},
            "source.auth.username",
        ),
        ({"mechanism": "kerberos"}, "source.auth.mechanism"),
    ],
)
def test_keys_that_do_not_belong_to_the_mechanism_are_errors(auth: dict[str, Any], key: str) -> None:
    assert f"{key}:" in error_of(auth=auth)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"librdkafka": {"enable.auto.commit": True}}, "source.librdkafka.enable.auto.commit: streamkit manages it"),
        ({"librdkafka": {"group.id": "x"}}, "source.librdkafka.group.id: set source.group_id instead"),
        ({"librdkafka": {"sasl.password": "x"}}, "set source.auth.password instead"),
        ({"topics": ["ok", "bad topic"]}, "source.topics[1]: 'bad topic' is not a valid topic name"),
        ({"topics": ["^orders-(\\d+"]}, "source.topics[0]: invalid pattern"),
        ({"topics": []}, "source.topics: expected at least one topic"),
        ({"revoke_timeout_s": 400}, "source.revoke_timeout_s: must be below max_poll_interval_ms"),
        ({"max_poll_interval_ms": 1000}, "source.max_poll_interval_ms: must be at least session_timeout_ms"),
        ({"start": "middle"}, "source.start:"),
        ({"batch_size": 0}, "source.batch_size: expected a positive number"),
        ({"buffer": "lots"}, "source.buffer:"),
    ],
)
def test_invalid_settings_name_their_key(section: dict[str, Any], message: str) -> None:
    assert message in error_of(**section)


def test_librdkafka_pass_through_and_topic_patterns() -> None:
    src = source(topics=["^orders-.*", "payments"], librdkafka={"fetch.max.bytes": 1048576, "isolation.level": "x"})
    assert src.topics == ["^orders-.*", "payments"] and src.name == "kafka:^orders-.*,payments"
    assert settings(src)["fetch.max.bytes"] == 1048576


async def test_unknown_librdkafka_settings_fail_at_start_naming_the_section() -> None:
    src = source(librdkafka={"no.such.setting": 1})
    with pytest.raises(ConfigError, match=r"source\.librdkafka: rejected by librdkafka"):
        await src.start(src.checkpoint_store())


@pytest.mark.parametrize("name", ["kafka-to-files.yaml", "kafka-msk-iam-avro.yaml"])
def test_the_example_pipelines_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamkit.config import load_config

    for variable, value in {"MSK_BOOTSTRAP": "b-1:9098", "SCHEMA_REGISTRY_URL": "https://r", "BUCKET": "b"}.items():
        monkeypatch.setenv(variable, value)
    path = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / name
    built = build_pipeline(load_config(path))
    assert isinstance(built.source, KafkaSource)
