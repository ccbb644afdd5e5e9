"""Running each measured side in a fork of the same process, so every side's memory starts equal.

A process keeps memory it freed (allocator arenas, pymalloc pools), and a side that runs after another
reuses it without it showing as added resident memory: run in turn in one process, later sides look
smaller. Each side therefore runs in a child forked from the benchmark process once the input is ready:
every child starts from the same memory (the input, the imported modules), measures its own time and its
own peak resident memory, and sends its figures back through a pipe. Where ``fork`` is missing (not
Linux or macOS) the side runs in the process itself, as before.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import Callable

from streamkit.devtools.bench.measure import Figures


class SideFailed(RuntimeError):
    """A side raised in its child process: the message carries the child's traceback."""


def can_isolate() -> bool:
    return hasattr(os, "fork") and sys.platform.startswith("linux")


def run_isolated(side: Callable[[], Figures]) -> Figures:
    """``side()`` in a forked child (or here, where forking is not available)."""
    if not can_isolate():
        return side()
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: run, report, and leave without running the parent's cleanup
        os.close(read_end)
        status = 0
        try:
            payload = pickle.dumps(("ok", side()))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
            status = 1
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = source.read()
    _, wait_status = os.waitpid(pid, 0)
    if not data:
        raise SideFailed(f"the benchmark side's process ended without a result (wait status {wait_status})")
    kind, result = pickle.loads(data)
    if kind == "error":
        raise SideFailed(f"the benchmark side failed in its process:\n{result}")
    if not isinstance(result, Figures):
        raise SideFailed(f"the benchmark side's process sent {type(result).__name__}, not Figures")
    return result
