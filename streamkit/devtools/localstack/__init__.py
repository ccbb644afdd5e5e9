"""Local stand-ins for AWS and Kafka, started on 127.0.0.1 and free ports, stopped by PID.

    from streamkit.devtools.localstack import LocalStack, MotoServer

    with MotoServer.start() as moto:          # blocks until it answers; stops on exit
        boto3.client("s3", endpoint_url=moto.endpoint_url, ...)

    stack = LocalStack.start(moto=True, kinesalite=True)
    stack.aws_endpoints()                    # {"kinesis": ..., "s3": ..., ...}
    stack.stop()

    with InfluxStandIn.start(token="t") as influx:   # the InfluxDB write endpoints, on a thread
        influx.url, influx.points("db"), influx.inject(429, headers={"Retry-After": "1"})

Which server stands in for what, and their quirks: docs/local-stack.md.
"""

from ._process import LocalServer, LocalStackError, ServerStartError, free_port
from .dynalite import Dynalite
from .influxdb import InfluxStandIn, InfluxStandInProcess
from .kinesis import Kinesalite, KinesisLocal
from .moto_server import InProcessMotoServer, MotoServer
from .stack import LocalStack
from .tansu import TansuBroker, kafka_api_versions_ok

__all__ = [
    "Dynalite",
    "InProcessMotoServer",
    "InfluxStandIn",
    "InfluxStandInProcess",
    "Kinesalite",
    "KinesisLocal",
    "LocalServer",
    "LocalStack",
    "LocalStackError",
    "MotoServer",
    "ServerStartError",
    "TansuBroker",
    "free_port",
    "kafka_api_versions_ok",
]
