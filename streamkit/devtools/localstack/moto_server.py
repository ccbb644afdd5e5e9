"""moto's server mode: S3, DynamoDB, Firehose, Timestream write (and a demo-grade Kinesis) over real HTTP."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any, Self

from ._process import (
    LOOPBACK,
    Launch,
    LocalServer,
    LocalStackError,
    StopsOnExit,
    free_port,
    http_status,
    spawn_on_ports,
)

_RESET_PATH = "/moto-api/reset"


def _reset(port: int) -> None:
    status = http_status(port, _RESET_PATH, method="POST", timeout=10.0)
    if status != 200:
        raise LocalStackError(f"moto reset (POST {_RESET_PATH}) on 127.0.0.1:{port} answered {status}")


class MotoServer(LocalServer):
    """`python -m moto.server -H 127.0.0.1 -p PORT` as a child process: its own interpreter and event loop."""

    name = "moto server"

    @classmethod
    def start(cls, *, port: int | None = None, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> Self:
        """Start moto and block until it answers HTTP. `env` replaces the inherited environment."""

        def build(ports: tuple[int, ...]) -> Launch:
            argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(ports[0])]

            def ready() -> bool:
                return http_status(ports[0], "/moto-api/") is not None

            if env is None:
                return Launch(cls.name, argv, ports, ready)
            return Launch(cls.name, argv, ports, ready, env=env)

        return cls(spawn_on_ports(build, [port], timeout))

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def reset(self) -> None:
        """Drop every resource in every moto backend (POST /moto-api/reset)."""
        _reset(self.port)


class InProcessMotoServer(StopsOnExit):
    """moto's ThreadedMotoServer on 127.0.0.1 in this process.

    Shares its backends with moto's in-process API (`moto.backends`), which is how tests read back what
    the server holds (Timestream records, for one). It lives on a thread of the test process; prefer
    MotoServer unless you need that access.
    """

    name = "moto (in-process)"

    def __init__(self, server: Any, port: int) -> None:
        self._server = server
        self._port = port
        self._stopped = False

    @classmethod
    def start(cls, *, port: int | None = None, timeout: float = 15.0) -> Self:
        from moto.server import ThreadedMotoServer

        chosen = port if port is not None else free_port()
        server = ThreadedMotoServer(ip_address=LOOPBACK, port=chosen, verbose=False)
        # ThreadedMotoServer.start() waits without a timeout and waits forever if the bind fails (the
        # server thread dies before it signals readiness), so it runs on a helper thread we can give up on.
        starter = threading.Thread(target=server.start, name="moto-inprocess-start", daemon=True)
        starter.start()
        starter.join(timeout)
        if starter.is_alive() or http_status(chosen, "/moto-api/") is None:
            raise LocalStackError(
                f"{cls.name} did not start on {LOOPBACK}:{chosen} within {timeout:.1f} s "
                "(is the port taken? the server thread's traceback is on stderr)"
            )
        return cls(server, chosen)

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self._port}"

    def reset(self) -> None:
        _reset(self._port)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._server.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint_url}>"
