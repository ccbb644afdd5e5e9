"""Plugin discovery: built-ins and third-party packages register the same way, through entry points.

A plugin is a class with a nested ``Options`` msgspec Struct (its configuration, validated at start-up)
and a constructor ``cls(options, env)``. Packages expose plugins in their ``pyproject.toml``::

    [project.entry-points."streamkit.processors"]
    "geo.enrich" = "my_package.geo:GeoEnrich"
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from streamkit.errors import PluginError

Kind = Literal["source", "sink", "processor", "checkpoint", "dead_letter", "lambda_event"]

GROUPS: dict[Kind, str] = {
    "source": "streamkit.sources",
    "sink": "streamkit.sinks",
    "processor": "streamkit.processors",
    "checkpoint": "streamkit.checkpoints",
    "dead_letter": "streamkit.dead_letters",
    # Decoders of Lambda events by eventSource: functions, not classes (streamkit.aws_lambda.events).
    "lambda_event": "streamkit.lambda_events",
}


@dataclass(frozen=True)
class PluginInfo:
    kind: Kind
    name: str
    target: str
    distribution: str


@cache
def _entry_points(kind: Kind) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUPS[kind]):
        found.setdefault(ep.name, ep)
    return found


def available(kind: Kind) -> list[PluginInfo]:
    return [
        PluginInfo(kind, name, ep.value, ep.dist.name if ep.dist is not None else "?")
        for name, ep in sorted(_entry_points(kind).items())
    ]


def load_plugin(kind: Kind, name: str, where: str) -> type[Any]:
    """The plugin class registered as ``name``; a clear error lists what is installed instead."""
    eps = _entry_points(kind)
    ep = eps.get(name)
    if ep is None:
        names = ", ".join(sorted(eps)) or "none"
        raise PluginError(
            where,
            f"unknown {kind.replace('_', ' ')} type {name!r}; installed: {names} "
            "(run `streamkit plugins` to list them, or install the package that provides it)",
        )
    try:
        loaded: type[Any] = ep.load()
    except Exception as exc:
        raise PluginError(where, f"{kind} {name!r} ({ep.value}) failed to import: {exc}") from exc
    return loaded


def resolve_reference(reference: str, where: str) -> Any:
    """Load ``package.module:attribute`` (the attribute may be dotted)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(where, f"expected 'package.module:callable', got {reference!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(where, f"cannot import module {module_name!r} for {reference!r}: {exc}") from exc
    except Exception as exc:  # user code runs on import: a SyntaxError, or anything its top level raises
        problem = f"{type(exc).__name__}: {exc}"
        raise PluginError(where, f"importing module {module_name!r} for {reference!r} failed: {problem}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(where, f"module {module_name!r} has no attribute {attribute!r}") from None
    return obj
