"""Secrets are masked by the name of their setting, in any spelling, wherever configuration is printed."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from streamkit.config import apply_overrides, convert
from streamkit.errors import ConfigError
from streamkit.redact import MASK, is_secret, redacted, scrub

SECRET_KEYS = [
    "sasl.password",
    "SASL.PASSWORD",
    "sasl_password",
    "Sasl-Password",
    "ssl.keystore.password",
    "ssl.key.password",
    "ssl.key.pem",
    "SSL_KEY_PEM",
    "sasl.oauthbearer.config",
    "SASL_OAUTHBEARER_CONFIG",
    "sasl.oauthbearer.client.secret",
    "oauth_cb",
    "basic.auth.user.info",
    "aws_session_token",
    "client_secret",
]
PLAIN_KEYS = ["bootstrap.servers", "group.id", "ssl.key.location", "sasl.username", "security.protocol", "topics"]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_settings_are_recognised_in_any_spelling(key: str) -> None:
    assert is_secret(key)


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_ordinary_settings_are_shown(key: str) -> None:
    assert not is_secret(key)


def test_redacted_masks_nested_values_and_keeps_the_rest() -> None:
    settings = {
        "group.id": "g",
        "SSL.KEYSTORE.PASSWORD": "hunter2",
        "librdkafka": {"sasl.oauthbearer.config": "clientSecret=abc", "fetch.max.bytes": 1024},
        "servers": [{"password": "p4ss", "host": "b-1"}],
        "token": None,  # nothing to hide: shown as unset
    }
    shown = redacted(settings)
    assert shown == {
        "group.id": "g",
        "SSL.KEYSTORE.PASSWORD": MASK,
        "librdkafka": {"sasl.oauthbearer.config": MASK, "fetch.max.bytes": 1024},
        "servers": [{"password": MASK, "host": "b-1"}],
        "token": None,
    }
    assert settings["SSL.KEYSTORE.PASSWORD"] == "hunter2", "the original is left alone"


def test_scrub_removes_secret_values_quoted_in_a_message() -> None:
    settings = {"ssl.key.pem": "-----BEGIN KEY-----abc", "group.id": "orders"}
    message = 'Invalid value "-----BEGIN KEY-----abc" for configuration property "ssl.key.pem" (group orders)'
    assert scrub(message, settings) == f'Invalid value "{MASK}" for configuration property "ssl.key.pem" (group orders)'


def test_a_mistyped_override_holding_a_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        apply_overrides({}, ["source.auth.password:hunter2"], "p.yaml")
    assert "hunter2" not in str(error.value) and MASK in str(error.value)


def test_an_out_of_bounds_secret_value_is_not_echoed() -> None:
    class Options(msgspec.Struct):
        door_secret: Annotated[int, msgspec.Meta(ge=1000)] = 1000
        retries: Annotated[int, msgspec.Meta(ge=0)] = 0

    with pytest.raises(ConfigError) as error:
        convert({"door_secret": 12}, Options, "processors[0]")
    assert str(error.value) == f"processors[0].door_secret: expected an integer >= 1000, got {MASK}"
    with pytest.raises(ConfigError) as error:
        convert({"retries": -1}, Options, "processors[0]")
    assert str(error.value) == "processors[0].retries: expected zero or more, got -1"
