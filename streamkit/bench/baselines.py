"""Finding the baselines, which live in the streamkit checkout (``benchmarks/baselines``), not the package.

They need the ``dev`` extra (boto3, Powertools, async-kinesis), so an installed streamkit runs without them
and says so. From a checkout (an editable install, or ``STREAMKIT_CHECKOUT`` pointing at one) they load.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

CHECKOUT_ENV = "STREAMKIT_CHECKOUT"


def checkout_root() -> Path | None:
    """The streamkit checkout holding ``benchmarks/baselines``, if there is one."""
    override = os.environ.get(CHECKOUT_ENV)
    # streamkit/bench/baselines.py -> the checkout that holds streamkit/ also holds benchmarks/.
    candidates = [Path(override)] if override else [Path(__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        if (root / "benchmarks" / "baselines" / "__init__.py").is_file():
            return root
    return None


def load_baselines() -> ModuleType | str:
    """The ``benchmarks.baselines`` package, or the reason it cannot be loaded."""
    root = checkout_root()
    if root is None:
        return f"baselines not found: run from a streamkit checkout (or set {CHECKOUT_ENV})"
    if str(root) not in sys.path:
        sys.path.append(str(root))
    try:
        return importlib.import_module("benchmarks.baselines")
    except ImportError as exc:
        return f"baselines not loadable ({exc}): install the dev extra (pip install -e '.[dev]')"
