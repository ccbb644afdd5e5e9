"""An aiobotocore session whose credentials come from STS AssumeRole, refreshed before they expire.

For reading a stream that belongs to another account: the role (in that account) trusts this worker's own
identity. The source credentials are the standard chain's (environment, shared files, container or instance
role), so nothing here accepts or stores a secret; the assumed credentials are fetched on first use and
again before they expire (botocore refreshes 15 minutes ahead, under a lock), so a long-running worker never
uses expired ones. STS is reached at ``aws.endpoints["sts"]`` when set (local tests), else the regional
endpoint.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession, get_session
from botocore.credentials import CredentialProvider

from streamkit.config import AwsSettings
from streamkit.connectors.aws_clients import STS_CLIENT_OPTIONS, client_config

__all__ = ["assumed_role_session", "role_session_name"]

_ROLE_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/.+$")


def role_session_name(prefix: str = "streamkit") -> str:
    """``streamkit-<host>-<pid>``: CloudTrail shows which worker assumed the role (2-64 allowed characters)."""
    name = f"{prefix}-{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^\w+=,.@-]", "-", name)[:64]


class _AssumedRoleProvider(CredentialProvider):  # type: ignore[misc]  # botocore ships no types
    """Puts the assumed-role credentials first in the session's chain."""

    METHOD = "streamkit-assume-role"
    CANONICAL_NAME = "streamkit-assume-role"

    def __init__(self, credentials: AioDeferredRefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> AioDeferredRefreshableCredentials:
        return self._credentials


def assumed_role_session(
    aws: AwsSettings,
    role_arn: str,
    *,
    session_name: str | None = None,
    external_id: str | None = None,
    duration_s: int | None = None,
) -> AioSession:
    """A session whose clients act as ``role_arn``; the role is assumed with the standard chain's identity.

    ``duration_s``: the session length asked of STS (900 s up to the role's maximum; STS default one hour).

    Raises ValueError for something that is not an IAM role ARN, so a typo fails at start-up.
    """
    if not _ROLE_ARN.match(role_arn):
        raise ValueError(f"{role_arn!r} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)")
    source = get_session()
    sts_kwargs = aws.client_kwargs("sts")

    def create_sts_client(service_name: str, **kwargs: Any) -> Any:
        # Built with the factory's config (explicit timeouts, standard retries); the fetcher passes the source
        # credentials it read from the standard chain, so AwsClient (which never takes credentials) is not used.
        config = client_config(STS_CLIENT_OPTIONS)
        return source.create_client(service_name, config=config, **{**sts_kwargs, **kwargs})

    extra: dict[str, Any] = {"RoleSessionName": session_name or role_session_name()}
    if external_id:
        extra["ExternalId"] = external_id
    if duration_s is not None:
        extra["DurationSeconds"] = duration_s
    fetcher = _SourceChainFetcher(source, create_sts_client, role_arn, extra)
    credentials = AioDeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials, method="assume-role")
    session = get_session()
    session.get_component("credential_provider").insert_before("env", _AssumedRoleProvider(credentials))
    return session


class _SourceChainFetcher(AioAssumeRoleCredentialFetcher):  # type: ignore[misc]  # aiobotocore ships no types
    """AssumeRole with the standard chain's credentials, resolved at the first fetch (not at construction,
    which runs outside the event loop) and re-read at every refresh (they may rotate too)."""

    def __init__(self, source: AioSession, client_creator: Any, role_arn: str, extra_args: dict[str, Any]) -> None:
        super().__init__(client_creator, source_credentials=None, role_arn=role_arn, extra_args=extra_args)
        self._source_session = source

    async def _create_client(self) -> Any:
        credentials = await self._source_session.get_credentials()
        if credentials is None:
            raise RuntimeError(
                f"no AWS credentials in the standard chain to assume {self._role_arn!r} with "
                "(environment, shared files, container or instance role)"
            )
        frozen = await credentials.get_frozen_credentials()
        return self._client_creator(
            "sts",
            aws_access_key_id=frozen.access_key,
            aws_secret_access_key=frozen.secret_key,
            aws_session_token=frozen.token,
        )
