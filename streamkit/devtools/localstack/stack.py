"""LocalStack: start the stand-ins a test run needs, together, and say which endpoint serves which service."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Self

from ._process import StopsOnExit
from .kinesis import Kinesalite, KinesisLocal
from .moto_server import MotoServer
from .tansu import TansuBroker

AnyServer = MotoServer | Kinesalite | KinesisLocal | TansuBroker

# The AWS services moto stands in for here (botocore service names).
MOTO_SERVICES = ("dynamodb", "s3", "firehose", "timestream-write")


class LocalStack(StopsOnExit):
    """A set of running stand-ins. Start with LocalStack.start(...), stop with .stop() or a with block."""

    def __init__(
        self,
        *,
        moto: MotoServer | None = None,
        kinesalite: Kinesalite | None = None,
        kinesis_local: KinesisLocal | None = None,
        tansu: TansuBroker | None = None,
    ) -> None:
        self.moto = moto
        self.kinesalite = kinesalite
        self.kinesis_local = kinesis_local
        self.tansu = tansu

    @classmethod
    def start(
        cls,
        *,
        moto: bool = True,
        kinesalite: bool = True,
        kinesis_local: bool = False,
        tansu: bool = False,
        timeout: float = 30.0,
    ) -> Self:
        """Start the requested servers in parallel; if any fails, stop the others and raise its error."""
        kinds: list[tuple[bool, Callable[..., AnyServer]]] = [
            (moto, MotoServer.start),
            (kinesalite, Kinesalite.start),
            (kinesis_local, KinesisLocal.start),
            (tansu, TansuBroker.start),
        ]
        wanted = [start for on, start in kinds if on]

        with ThreadPoolExecutor(max_workers=max(1, len(wanted)), thread_name_prefix="localstack") as pool:
            futures: list[Future[AnyServer]] = [pool.submit(start, timeout=timeout) for start in wanted]
        stack = cls()
        failures: list[BaseException] = []
        for future in futures:
            error = future.exception()
            if error is not None:
                failures.append(error)
            else:
                stack._adopt(future.result())
        if failures:
            stack.stop()
            raise failures[0]
        return stack

    def _adopt(self, server: AnyServer) -> None:
        if isinstance(server, MotoServer):
            self.moto = server
        elif isinstance(server, Kinesalite):
            self.kinesalite = server
        elif isinstance(server, KinesisLocal):
            self.kinesis_local = server
        else:
            self.tansu = server

    def servers(self) -> list[AnyServer]:
        found = [self.moto, self.kinesalite, self.kinesis_local, self.tansu]
        return [s for s in found if s is not None]

    def stop(self) -> None:
        """Stop every server of the stack (each by its own PID)."""
        for server in self.servers():
            server.stop()

    def aws_endpoints(self) -> dict[str, str]:
        """botocore service name -> endpoint URL.

        kinesis goes to kinesalite when it runs (lossless), else kinesis-local, else moto (demo only).
        Pass each as endpoint_url explicitly: timestream-write ignores AWS_ENDPOINT_URL for its endpoint
        discovery.
        """
        endpoints: dict[str, str] = {}
        if self.moto is not None:
            endpoints.update({service: self.moto.endpoint_url for service in MOTO_SERVICES})
        kinesis = self.kinesalite or self.kinesis_local or self.moto
        if kinesis is not None:
            endpoints["kinesis"] = kinesis.endpoint_url
        return endpoints

    def __repr__(self) -> str:
        return f"<LocalStack {self.servers()!r}>"
