"""A loopback TCP proxy that can hang or cut the connection between a worker and a local stand-in.

Fault tests put it between a worker and one service (moto's DynamoDB or S3, kinesalite): the stand-in
keeps its state, only the network between them fails, as it does when a service stalls or a network path
drops. It runs its own event loop in a daemon thread, so it serves synchronous tests, async tests and
worker subprocesses alike, and it listens on 127.0.0.1 only.

    with TcpProxy.running(moto.endpoint_url) as proxy:
        ...endpoint proxy.endpoint_url...
        proxy.hang()      # bytes stop flowing, connections stay open: calls wait (a stalled service)
        proxy.cut()       # every connection is reset, new ones are reset at once (a service unreachable)
        proxy.restore()   # bytes flow again; held bytes are delivered

Every state change is counted in :attr:`stats`, so a test can assert that its fault really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Mode = Literal["pass", "hang", "cut"]

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    connections: int = 0
    """Connections accepted."""
    reset: int = 0
    """Connections reset by a cut (open ones, and new ones refused while cut)."""
    bytes_up: int = 0
    bytes_down: int = 0


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        if target_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the proxy only forwards to loopback, not {target_host!r}")
        self.target = (target_host, target_port)
        self.stats = ProxyStats()
        self.mode: Mode = "pass"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"tcp-proxy->{target_port}", daemon=True)
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    @contextlib.contextmanager
    def running(cls, target_url: str) -> Iterator[TcpProxy]:
        """A started proxy to the host and port of ``target_url``, stopped on exit."""
        parts = urlsplit(target_url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"expected http://host:port, got {target_url!r}")
        proxy = cls(parts.hostname, parts.port)
        proxy.start()
        try:
            yield proxy
        finally:
            proxy.stop()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control (any thread) --------------------------------------------------------------------
    def hang(self) -> None:
        """Stop forwarding bytes; connections stay open and new ones are accepted (calls just wait)."""
        self._switch("hang")

    def cut(self) -> None:
        """Reset every open connection, and every new one while cut."""
        self._switch("cut")

    def restore(self) -> None:
        """Forward again (bytes held by a hang are delivered)."""
        self._switch("pass")

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TCP proxy did not start")

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _switch(self, mode: Mode) -> None:
        asyncio.run_coroutine_threadsafe(self._set_mode(mode), self._loop).result(10)

    # -- the proxy's own loop --------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: Mode) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == "pass":
            self._flowing.set()
            return
        self._flowing.clear()
        if mode == "cut":
            for writer in list(self._writers):
                self._reset(writer)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            self._reset(writer)
        if self._flowing is not None:
            self._flowing.set()  # let held pumps see their closed streams and end

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        if writer.transport.is_closing():
            return
        self.stats.reset += 1
        writer.transport.abort()  # RST, not a clean close: what a dropped path looks like to the client

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.mode == "cut":
            self._reset(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._reset(client_writer)
            return
        self._writers.update((client_writer, upstream_writer))
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream_writer, up=True),
                self._pump(upstream_reader, client_writer, up=False),
            )
        finally:
            for writer in (client_writer, upstream_writer):
                self._writers.discard(writer)
                if not writer.transport.is_closing():
                    writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                if writer.transport.is_closing():
                    return
                # Counted before the write: the peer may read these bytes (on its own thread) before this
                # task runs again, and a test that saw the answer must see it counted.
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.transport.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side gone: end the other as well (a cut resets both).
            if not writer.transport.is_closing():
                writer.close()
