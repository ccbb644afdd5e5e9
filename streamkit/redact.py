"""Secrets out of everything streamkit prints: log lines, ``streamkit validate``, errors, health answers.

Secrets are recognised by the name of their setting, not by a list of known settings: librdkafka alone has
dozens of secret-bearing properties (``sasl.password``, ``ssl.keystore.password``, ``ssl.key.pem``,
``sasl.oauthbearer.config``, ...), plugins add their own, and a list would miss the next one. A key is
secret when, lower-cased and with ``.``, ``_`` and ``-`` removed, it contains one of :data:`SECRET_MARKERS`
(so ``SASL.Password``, ``sasl_password`` and ``saslPassword`` are all caught).

Every place that shows configuration values calls :func:`redacted` (a mapping) or :func:`scrub` (a message
that may quote values, such as librdkafka's own errors); nothing prints configuration otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "SECRET_MARKERS", "is_secret", "redacted", "scrub", "secret_values"]

MASK = "***"

SECRET_MARKERS = (
    "password",
    "secret",
    "keypem",  # ssl.key.pem, ssl.keystore.pem...: private keys given inline
    "token",
    "oauthbearerconfig",  # sasl.oauthbearer.config may carry a client secret or an unsecured JWT
    "oauthcb",  # a callback that hands out bearer tokens
    "basicauth",  # user:password for schema registries
    "credential",
)
_SEPARATORS = re.compile(r"[._\-\s]")


def is_secret(key: object) -> bool:
    """Whether a setting named ``key`` holds a secret (see the module docstring for the rule)."""
    name = _SEPARATORS.sub("", str(key).lower())
    return any(marker in name for marker in SECRET_MARKERS)


def redacted(settings: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy of ``settings`` fit for printing: values of secret keys masked, nested mappings and lists too."""
    return {
        key: MASK if is_secret(key) and value is not None else _redact_value(value) for key, value in settings.items()
    }


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redacted(value)
    if isinstance(value, (list, tuple)):
        return [_redact_value(item) for item in value]
    return value


def secret_values(settings: Mapping[Any, Any]) -> list[str]:
    """The text of every secret value in ``settings`` (nested too), longest first."""
    found: list[str] = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            found.extend(secret_values(value))
        elif is_secret(key) and value is not None and not callable(value) and str(value):
            found.append(str(value))
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, settings: Mapping[Any, Any]) -> str:
    """``text`` with every secret value of ``settings`` replaced by the mask (for third-party messages
    that quote a rejected value, such as ``Invalid value "..." for configuration property "ssl.key.pem"``)."""
    for value in secret_values(settings):
        text = text.replace(value, MASK)
    return text
