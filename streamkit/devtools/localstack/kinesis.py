"""The two npm-packaged Kinesis servers, both run under node with the loopback preload.

kinesalite: fast and lossless, the default for data-plane tests. kinesis-local (a JS build of
kinesis-mock): faithful shard lineage (ChildShards, UpdateShardCount, ShardFilter), used for resharding.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Self

from . import _kinesis_api
from ._node import node_argv, node_binary, package_file
from ._process import LOOPBACK, Launch, LocalServer, LocalStackError, http_status, spawn_on_ports


class _KinesisServer(LocalServer):
    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def reset(self, timeout: float = 10.0) -> None:
        """Delete every stream and wait until none is listed."""
        _kinesis_api.delete_all_streams(self.port, timeout)


class Kinesalite(_KinesisServer):
    """`node -r force_loopback.js kinesalite/cli.js --port P --createStreamMs 0 ...` (in-memory store)."""

    name = "kinesalite"

    @classmethod
    def unavailable(cls) -> str | None:
        """Why kinesalite cannot start here (no Node.js, or the npm package is not installed), else None."""
        try:
            node_binary()
            package_file("kinesalite", "cli.js")
        except LocalStackError as exc:
            return str(exc)
        return None

    @classmethod
    def start(
        cls,
        *,
        port: int | None = None,
        timeout: float = 20.0,
        stream_transition_ms: int = 0,
        shard_limit: int = 1000,
    ) -> Self:
        """Start kinesalite and block until it answers HTTP.

        `stream_transition_ms` is how long streams stay CREATING / DELETING / UPDATING (kinesalite's
        default is 500 ms; 0 makes tests fast). `shard_limit` is the account shard limit it enforces.
        """
        cli = package_file("kinesalite", "cli.js")

        def build(ports: tuple[int, ...]) -> Launch:
            ms = str(stream_transition_ms)
            argv = node_argv(
                cli,
                *("--port", str(ports[0]), "--shardLimit", str(shard_limit)),
                *("--createStreamMs", ms, "--deleteStreamMs", ms, "--updateStreamMs", ms),
            )

            def ready() -> bool:
                return http_status(ports[0], "/") is not None  # 403 AccessDenied on GET: it is up

            return Launch(cls.name, argv, ports, ready)

        return cls(spawn_on_ports(build, [port], timeout))


# kinesis-mock's per-operation delays (README "Service Configuration"), all set to stream_transition_ms.
_KINESIS_LOCAL_DURATIONS = (
    "CREATE_STREAM_DURATION",
    "DELETE_STREAM_DURATION",
    "REGISTER_STREAM_CONSUMER_DURATION",
    "DEREGISTER_STREAM_CONSUMER_DURATION",
    "START_STREAM_ENCRYPTION_DURATION",
    "STOP_STREAM_ENCRYPTION_DURATION",
    "MERGE_SHARDS_DURATION",
    "SPLIT_SHARD_DURATION",
    "UPDATE_SHARD_COUNT_DURATION",
    "UPDATE_STREAM_MODE_DURATION",
)


class KinesisLocal(_KinesisServer):
    """`node -r force_loopback.js kinesis-local/main.js`, configured through environment variables.

    It always opens two ports: plain HTTP (endpoint_url) and HTTPS with a self-signed cert (tls_port).
    """

    name = "kinesis-local"

    @classmethod
    def start(
        cls,
        *,
        port: int | None = None,
        tls_port: int | None = None,
        timeout: float = 30.0,
        stream_transition_ms: int = 0,
        shard_limit: int = 1000,
        on_demand_stream_limit: int = 100,
        initialize_streams: Mapping[str, int] | None = None,
        region: str = "us-east-1",
        log_level: str = "WARN",
        extra_env: Mapping[str, str] | None = None,
    ) -> Self:
        """Start kinesis-local and block until GET /healthcheck answers 200 on the plain port.

        `initialize_streams` maps stream name -> shard count for streams created at start-up.
        `extra_env` adds or overrides any kinesis-mock setting (see its README in node_modules).
        """
        main_js = package_file("kinesis-local", "main.js")
        cert = package_file("kinesis-local", "server.json")

        def build(ports: tuple[int, ...]) -> Launch:
            plain, tls = ports
            env = dict(os.environ)
            env.update({name: f"{stream_transition_ms}ms" for name in _KINESIS_LOCAL_DURATIONS})
            env.update(
                {
                    "KINESIS_MOCK_PLAIN_PORT": str(plain),
                    "KINESIS_MOCK_TLS_PORT": str(tls),
                    # Read relative to the working directory unless absolute; ours is the log dir.
                    "KINESIS_MOCK_CERT_PATH": str(cert),
                    "SHARD_LIMIT": str(shard_limit),
                    "ON_DEMAND_STREAM_COUNT_LIMIT": str(on_demand_stream_limit),
                    "AWS_REGION": region,
                    "LOG_LEVEL": log_level,
                    # Never pick up a data file left in the working directory by an earlier run.
                    "SHOULD_PERSIST_DATA": "false",
                    "LOAD_DATA_IF_EXISTS": "false",
                }
            )
            if initialize_streams:
                env["INITIALIZE_STREAMS"] = ",".join(f"{n}:{c}" for n, c in initialize_streams.items())
            env.update(extra_env or {})

            def ready() -> bool:
                return http_status(plain, "/healthcheck") == 200

            return Launch(cls.name, node_argv(main_js), ports, ready, env=env)

        running = spawn_on_ports(build, [port, tls_port], timeout)
        return cls(running)

    @property
    def tls_port(self) -> int:
        """The HTTPS port (self-signed certificate); tests use the plain endpoint_url."""
        return self._running.ports[1]
