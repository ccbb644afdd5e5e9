"""Finding node, the repo's node_modules and the loopback preload for the npm-packaged servers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ._process import LocalStackError

NODE_MODULES_ENV = "STREAMKIT_NODE_MODULES"
FORCE_LOOPBACK_JS = Path(__file__).with_name("force_loopback.js")

_INSTALL_HINT = (
    "run `npm ci` in the streamkit repo root (or `make setup`), "
    f"or set {NODE_MODULES_ENV} to a node_modules directory that has it"
)


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise LocalStackError("node is not on PATH: install Node.js (20 or newer) to run kinesalite/kinesis-local")
    return node


def _candidate_node_modules() -> list[Path]:
    override = os.environ.get(NODE_MODULES_ENV)
    if override:
        # An explicit setting is never silently replaced by a guess.
        return [Path(override)]
    # streamkit/devtools/localstack/_node.py -> the repo checkout holding streamkit/ also holds package.json.
    repo_root = Path(__file__).resolve().parents[3]
    return [repo_root / "node_modules", Path.cwd() / "node_modules"]


def package_file(package: str, relative: str) -> Path:
    """The path of `relative` inside an installed npm package; if missing, an error saying how to install."""
    candidates = _candidate_node_modules()
    for node_modules in candidates:
        path = node_modules / package / relative
        if path.is_file():
            return path
    looked = ", ".join(str(c / package / relative) for c in candidates)
    raise LocalStackError(f"npm package {package!r} is not installed (looked for {looked}): {_INSTALL_HINT}")


def node_argv(script: Path, *args: str) -> list[str]:
    """`node -r force_loopback.js script args...`: every listen() of the server goes to 127.0.0.1."""
    if not FORCE_LOOPBACK_JS.is_file():
        raise LocalStackError(f"{FORCE_LOOPBACK_JS} is missing: the streamkit install is incomplete")
    return [node_binary(), "-r", str(FORCE_LOOPBACK_JS), str(script), *args]
