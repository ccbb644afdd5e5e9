"""How the consumer authenticates: MSK IAM, SASL/SCRAM, mutual TLS, or plaintext for local runs.

Each mechanism allows a fixed set of keys; a key that does not belong to the chosen mechanism is an
error at start-up rather than silently ignored (a ``password`` next to ``mechanism: iam`` usually means
the wrong listener port). Secrets come from the environment through ``${VAR}`` in the pipeline file and
are never logged: :func:`streamkit.redact.redacted` is what log lines show of a librdkafka configuration.

MSK listeners: IAM on port 9098, SASL/SCRAM on 9096, TLS (and mutual TLS) on 9094, plaintext on 9092.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
import structlog

from streamkit.errors import ConfigError

log = structlog.get_logger("streamkit.kafka")

Mechanism = Literal["iam", "scram-sha-512", "scram-sha-256", "mtls", "plaintext"]

# The keys each mechanism takes besides ``mechanism``; everything else set is a configuration error.
_ALLOWED: dict[str, frozenset[str]] = {
    "iam": frozenset({"region", "role_arn", "ca_location"}),
    "scram-sha-512": frozenset({"username", "password", "ca_location"}),
    "scram-sha-256": frozenset({"username", "password", "ca_location"}),
    "mtls": frozenset({"ca_location", "certificate_location", "key_location", "key_password"}),
    "plaintext": frozenset(),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "scram-sha-512": ("username", "password"),
    "scram-sha-256": ("username", "password"),
    "mtls": ("certificate_location", "key_location"),
}
_PATH_KEYS = ("ca_location", "certificate_location", "key_location")


class AuthOptions(msgspec.Struct, forbid_unknown_fields=True):
    """``source.auth``."""

    mechanism: Mechanism = "plaintext"
    region: str | None = None
    """iam: the cluster's region (default: ``aws.region``, then AWS_REGION / AWS_DEFAULT_REGION)."""
    role_arn: str | None = None
    """iam: sign with credentials of this role (assumed through STS) instead of the worker's own."""
    username: str | None = None
    password: str | None = None
    ca_location: str | None = None
    """TLS: a CA bundle file; by default the system's trust store (enough for MSK's Amazon-issued certs)."""
    certificate_location: str | None = None
    """mtls: the client certificate (PEM)."""
    key_location: str | None = None
    """mtls: the client's private key (PEM)."""
    key_password: str | None = None


def check_auth(auth: AuthOptions, where: str, default_region: str | None) -> AuthOptions:
    """Validate the combination of keys for the mechanism; fill in the IAM region. Raises ConfigError."""
    base = f"{where}.auth"
    allowed = _ALLOWED[auth.mechanism]
    for key in AuthOptions.__struct_fields__:
        if key != "mechanism" and getattr(auth, key) is not None and key not in allowed:
            uses = ", ".join(sorted(allowed)) or "no other keys"
            raise ConfigError(f"{base}.{key}", f"not used with mechanism {auth.mechanism!r} (it takes {uses})")
    for key in _REQUIRED.get(auth.mechanism, ()):
        if not getattr(auth, key):
            raise ConfigError(f"{base}.{key}", f"required with mechanism {auth.mechanism!r}")
    if auth.mechanism == "iam" and not auth.region:
        region = default_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            raise ConfigError(f"{base}.region", "required with mechanism 'iam' (or set aws.region or AWS_REGION)")
        auth = msgspec.structs.replace(auth, region=region)
    return auth


def check_files(auth: AuthOptions, where: str, resolve: Callable[[str], Path]) -> AuthOptions:
    """Resolve certificate paths against the pipeline file and check they are readable (at start-up,
    not in ``streamkit validate``: certificates are often mounted only where the worker runs)."""
    updates: dict[str, str] = {}
    for key in _PATH_KEYS:
        value = getattr(auth, key)
        if value is None:
            continue
        path = resolve(value)
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{where}.auth.{key}", f"cannot read {path}")
        updates[key] = str(path)
    return msgspec.structs.replace(auth, **updates) if updates else auth


def librdkafka_auth(auth: AuthOptions) -> dict[str, Any]:
    """The librdkafka settings for ``auth`` (checked by :func:`check_auth` first)."""
    settings: dict[str, Any] = {}
    if auth.mechanism == "plaintext":
        settings["security.protocol"] = "PLAINTEXT"
        return settings
    if auth.mechanism == "iam":
        assert auth.region is not None
        settings.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "OAUTHBEARER",
                "oauth_cb": IamTokenProvider(auth.region, auth.role_arn),
            }
        )
    elif auth.mechanism.startswith("scram"):
        settings.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": auth.mechanism.upper(),
                "sasl.username": auth.username,
                "sasl.password": auth.password,
            }
        )
    else:  # mtls
        settings.update(
            {
                "security.protocol": "SSL",
                "ssl.certificate.location": auth.certificate_location,
                "ssl.key.location": auth.key_location,
            }
        )
        if auth.key_password:
            settings["ssl.key.password"] = auth.key_password
    if auth.ca_location:
        settings["ssl.ca.location"] = auth.ca_location
    return settings


class IamTokenProvider:
    """librdkafka's ``oauth_cb`` for MSK IAM: a SigV4-presigned token from the standard credential chain.

    librdkafka calls it from its background thread before the token expires (tokens live 15 minutes).
    The token is a bearer credential: it is returned to librdkafka and never logged.
    """

    def __init__(self, region: str, role_arn: str | None = None) -> None:
        self.region = region
        self.role_arn = role_arn

    def __call__(self, _oauth_config: str) -> tuple[str, float]:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        started = time.monotonic()
        try:
            if self.role_arn:
                token, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_role_arn(self.region, self.role_arn)
            else:
                token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(self.region)
        except Exception as exc:
            # librdkafka retries the callback; the message says where credentials were looked for.
            log.error("MSK IAM token generation failed", region=self.region, error=f"{type(exc).__name__}: {exc}")
            raise
        log.debug("MSK IAM token refreshed", region=self.region, took_ms=round((time.monotonic() - started) * 1000))
        return token, expiry_ms / 1000

    def __repr__(self) -> str:
        return f"IamTokenProvider(region={self.region!r})"
