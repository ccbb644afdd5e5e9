"""Which baselines run on which source, and what each needs installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamkit.devtools.bench.measure import Figures

from . import async_kinesis, boto3_loop, powertools


@dataclass(frozen=True)
class Baseline:
    name: str
    run: Callable[[Any], Figures]
    requires: tuple[str, ...] = ()
    """Importable modules it needs; without them it is reported as skipped."""

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


def synthetic_baselines() -> list[Baseline]:
    return [
        Baseline("boto3 loop", boto3_loop.synthetic, ("botocore",)),
        Baseline("Powertools BatchProcessor", powertools.synthetic, ("aws_lambda_powertools",)),
    ]


def local_baselines() -> list[Baseline]:
    return [
        Baseline("raw GetRecords loop", boto3_loop.local_raw, ("boto3",)),
        Baseline("boto3 loop", boto3_loop.local, ("boto3",)),
        Baseline("async-kinesis", async_kinesis.local, ("kinesis",)),
    ]
