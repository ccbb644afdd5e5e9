"""Secrets given through ``source.librdkafka`` never reach the log: the real ``kafka consumer connected``
line, rendered as JSON by streamkit's own logging set-up, against a real broker (Tansu)."""

from __future__ import annotations

import orjson
import pytest
import structlog

from streamkit import log as logsetup
from streamkit.build import build_pipeline
from streamkit.config import parse_config
from streamkit.devtools.localstack import TansuBroker
from streamkit.redact import MASK
from tests.integration.test_kafka_source import create_topic

# Settings librdkafka accepts on a plaintext listener (and ignores there), each holding a secret.
SECRETS = {
    "sasl.oauthbearer.config": "principal=svc clientSecret=oauth-SECRET-1",
    "ssl.keystore.password": "keystore-SECRET-2",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----key-SECRET-3-----END PRIVATE KEY-----",
    "sasl.oauthbearer.client.secret": "client-SECRET-4",
}


async def test_the_connected_log_line_masks_every_secret(
    tansu: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = tansu.bootstrap_servers
    topic = create_topic(bootstrap)
    logsetup.configure("json", "INFO")  # writes to the sys.stderr capsys installed for this test
    pipeline = build_pipeline(
        parse_config(
            {
                "source": {
                    "type": "kafka",
                    "bootstrap_servers": bootstrap,
                    "topics": [topic],
                    "group_id": "redaction",
                    "session_timeout_ms": 6000,
                    "librdkafka": {**SECRETS, "fetch.max.bytes": 1048576},
                },
                "sinks": [{"type": "memory"}],
            }
        )
    )
    try:
        await pipeline.source.start(pipeline.store)
    finally:
        await pipeline.source.close()
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "SECRET" not in err
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    connected = [line for line in lines if line.get("event") == "kafka consumer connected"]
    assert len(connected) == 1
    config = connected[0]["config"]
    assert {key: config[key] for key in SECRETS} == dict.fromkeys(SECRETS, MASK)
    assert config["fetch.max.bytes"] == 1048576 and config["group.id"] == "redaction"
