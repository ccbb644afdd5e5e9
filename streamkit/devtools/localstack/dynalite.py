"""dynalite: a DynamoDB stand-in under node (npm ``dynalite``), faster than moto for lease-table load.

Used by the lease fleet simulation (benchmarks/lease_fleet.py, tests/integration/test_lease_fleet.py), where
moto's single Python core cannot serve 50 workers scanning and renewing 1,000 leases. It implements the
calls the lease coordinator makes (conditional UpdateItem/PutItem/DeleteItem, consistent Scan and GetItem,
a KEYS_ONLY global secondary index) but not transactions, TTL, or ``ReturnValuesOnConditionCheckFailure``
(a failed condition comes back without the item): keep tests of those on moto. See docs/local-stack.md.
"""

from __future__ import annotations

from typing import Self

from ._node import node_argv, node_binary, package_file
from ._process import LOOPBACK, Launch, LocalServer, LocalStackError, http_status, spawn_on_ports


class Dynalite(LocalServer):
    """``node -r force_loopback.js dynalite/cli.js --host 127.0.0.1 --port P --createTableMs 0 ...``, in memory."""

    name = "dynalite"

    @classmethod
    def unavailable(cls) -> str | None:
        """Why dynalite cannot start here (no Node.js, or the npm package is not installed), else None."""
        try:
            node_binary()
            package_file("dynalite", "cli.js")
        except LocalStackError as exc:
            return str(exc)
        return None

    @classmethod
    def start(cls, *, port: int | None = None, timeout: float = 20.0, table_transition_ms: int = 0) -> Self:
        """Start dynalite (in-memory store: no ``--path``) and block until it answers HTTP.

        ``table_transition_ms``: how long tables stay CREATING / DELETING / UPDATING (dynalite's default is
        500 ms; 0 makes tests fast).
        """
        cli = package_file("dynalite", "cli.js")

        def build(ports: tuple[int, ...]) -> Launch:
            ms = str(table_transition_ms)
            argv = node_argv(
                cli,
                *("--host", LOOPBACK, "--port", str(ports[0])),
                *("--createTableMs", ms, "--deleteTableMs", ms, "--updateTableMs", ms),
            )

            def ready() -> bool:
                return http_status(ports[0], "/") is not None  # any answer: it is up (GET is not an API call)

            return Launch(cls.name, argv, ports, ready)

        return cls(spawn_on_ports(build, [port], timeout))

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"
