"""The benchmark's results: one JSON document, and the same as Markdown tables.

Baselines are reported as ratios: streamkit's records/s divided by the baseline's, measured in the same
run on the same records (absolute figures drift between runs and machines; ratios much less).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

from streamkit.devtools.bench.measure import READ_LIMIT_MIB_S, Figures


@dataclass
class Report:
    source: str
    pipeline: str
    sink: str
    shards: int
    records: int
    duration_s: float | None
    rounds: int
    command: str
    streamkit: list[Figures] = field(default_factory=list)
    baselines: list[Figures] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Baselines that did not run, with the reason."""
    notes: list[str] = field(default_factory=list)

    def ratios(self, baseline: Figures) -> dict[str, float | None]:
        return {
            kit.name: round(kit.records_per_s / baseline.records_per_s, 2) if baseline.records_per_s else None
            for kit in self.streamkit
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "streamkit_version": _version(),
            "command": self.command,
            "source": self.source,
            "pipeline": self.pipeline,
            "sink": self.sink,
            "settings": {
                "shards": self.shards,
                "records": self.records,
                "duration_s": self.duration_s,
                "rounds": self.rounds,
                "read_limit_mib_per_s": READ_LIMIT_MIB_S,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "processor": platform.machine(),
            },
            "streamkit": [f.as_json() for f in self.streamkit],
            "baselines": [{**b.as_json(), "streamkit_ratio": self.ratios(b)} for b in self.baselines],
            "skipped": [{"name": name, "reason": reason} for name, reason in self.skipped.items()],
            "notes": self.notes,
        }


def _version() -> str:
    try:
        return importlib.metadata.version("streamkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(report: Report) -> str:
    lines = [
        f"## streamkit bench: {report.source} source, {report.shards} shard(s), {report.records:,} records",
        "",
        f"- command: `{report.command}`",
        f"- pipeline: {report.pipeline}",
        f"- sink: {report.sink}",
        f"- machine: {os.cpu_count()} CPU(s), Python {platform.python_version()}, {sys.platform}",
        f"- speed: best of {report.rounds} round(s), counting records finished (written, or filtered out); "
        "CPU: this process only; memory: each side's first round",
    ]
    for kit in report.streamkit:
        lines += ["", f"### {kit.name}: {kit.description}", ""]
        lines.append(_row(["shard", "records", "records/s", "MiB/s", "p50 ms", "p99 ms", "MillisBehindLatest"]))
        lines.append(_row(["---"] + ["---:"] * 6))
        for s in kit.shards:
            lines.append(
                _row(
                    [
                        s.shard,
                        _n(s.records),
                        _n(s.records_per_s),
                        _n(s.mib_per_s, 1),
                        _n(s.latency_p50_ms, 1),
                        _n(s.latency_p99_ms, 1),
                        _n(s.millis_behind_latest),
                    ]
                )
            )
        lines.append(
            _row(
                [
                    "**total**",
                    _n(kit.records),
                    _n(kit.records_per_s),
                    _n(kit.mib_per_s, 1),
                    _n(kit.latency_p50_ms, 1),
                    _n(kit.latency_p99_ms, 1),
                    _n(kit.millis_behind_latest),
                ]
            )
        )
    lines += ["", "### Side by side", ""]
    ratio_heads = [f"{k.name} ÷ this" for k in report.streamkit]
    heads = [
        "",
        "records/s",
        "MiB/s",
        "CPU s / M records",
        "peak RSS MiB (added)",
        "shards/core @ 2 MiB/s",
        *ratio_heads,
    ]
    lines.append(_row(heads))
    lines.append(_row(["---"] + ["---:"] * (len(heads) - 1)))
    for figures in [*report.streamkit, *report.baselines]:
        ratios = report.ratios(figures) if figures in report.baselines else {}
        lines.append(
            _row(
                [
                    figures.name,
                    _n(figures.records_per_s),
                    _n(figures.mib_per_s, 1),
                    _n(figures.cpu_s_per_million, 2),
                    f"{_n(figures.peak_rss_mib)} (+{_n(figures.peak_added_mib)})",
                    _n(figures.shards_per_core, 1),
                    *[f"{r:.2f}x" if r is not None else "-" for r in ratios.values()],
                    *([""] * (len(ratio_heads) if not ratios else 0)),
                ]
            )
        )
    described = [f for f in report.baselines if f.description]
    if described or report.skipped:
        lines.append("")
    for figures in described:
        note = f" ({figures.note})" if figures.note else ""
        lines.append(f"- {figures.name}: {figures.description}{note}")
    for name, reason in report.skipped.items():
        lines.append(f"- {name}: skipped, {reason}")
    for note in report.notes:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"
