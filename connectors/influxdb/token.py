"""The InfluxDB API token: from AWS Secrets Manager or an environment variable, and never shown.

- ``token_secret``: a secret ARN or name, read with ``secretsmanager:GetSecretValue`` through the
  standard AWS credential chain. The secret is either the bare token, or a JSON object holding it under
  ``token_secret_key`` (``token`` by default, the key Timestream for InfluxDB's token secrets use).
- ``token_env``: the name of an environment variable holding the token (e.g. injected by ECS from
  Secrets Manager with ``secrets:`` in the task definition).

The value lives in a :class:`Token`, whose ``repr`` and ``str`` are redacted, so it cannot reach a log
line, an exception message or a config dump by accident. Errors name the secret or the variable only.
"""

from __future__ import annotations

import os

import orjson
import structlog

from streamkit.config import AwsSettings
from streamkit.connectors.aws_clients import SDK_ERRORS, AwsClient, describe_error
from streamkit.errors import ConfigError

log = structlog.get_logger("streamkit.connectors.influxdb")


class Token:
    """A secret string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Token(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class TokenSource:
    """Where the token comes from; :meth:`load` reads it (again, after a rotation)."""

    def __init__(
        self,
        *,
        secret: str | None,
        secret_key: str,
        env: str | None,
        aws: AwsSettings,
        where: str,
    ) -> None:
        if (secret is None) == (env is None):
            raise ConfigError(f"{where}.token_secret", "set exactly one of token_secret and token_env")
        self.secret = secret
        self.secret_key = secret_key
        self.env = env
        self.aws = aws
        self.where = where

    @property
    def rotatable(self) -> bool:
        """A secret may have been rotated since it was read: reading it again can help after a 401."""
        return self.secret is not None

    @property
    def describe(self) -> str:
        return f"secret {self.secret!r}" if self.secret is not None else f"environment variable {self.env}"

    async def load(self) -> Token:
        if self.env is not None:
            value = os.environ.get(self.env, "")
            if not value.strip():
                raise ConfigError(f"{self.where}.token_env", f"environment variable {self.env} is not set or empty")
            return Token(value.strip())
        return await self._from_secret()

    async def _from_secret(self) -> Token:
        assert self.secret is not None
        where = f"{self.where}.token_secret"
        try:
            async with AwsClient(self.aws, "secretsmanager") as client:
                answer = await client.get_secret_value(SecretId=self.secret)
        except SDK_ERRORS as exc:
            # describe_error carries the service's code and message, never the secret's value.
            raise ConfigError(where, f"cannot read secret {self.secret!r}: {describe_error(exc)}") from None
        text = answer.get("SecretString")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(where, f"secret {self.secret!r} has no SecretString (binary secrets are not supported)")
        token = self._extract(text.strip(), where)
        log.info("influxdb token read from secrets manager", secret=self.secret, version=answer.get("VersionId"))
        return Token(token)

    def _extract(self, text: str, where: str) -> str:
        if not text.startswith("{"):
            return text
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text  # a token that happens to start with "{"
        value = document.get(self.secret_key) if isinstance(document, dict) else None
        if not isinstance(value, str) or not value.strip():
            keys = sorted(document) if isinstance(document, dict) else []
            raise ConfigError(
                where, f"secret {self.secret!r} is JSON without a string {self.secret_key!r} key (it has {keys})"
            )
        return value.strip()
