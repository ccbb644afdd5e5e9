"""The plugin boundary is typed: every built-in takes ``(options, env: PluginEnv)``, and the env serves them."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from streamkit.config import AwsSettings
from streamkit.errors import ConfigError, PluginError
from streamkit.plugin_env import PluginEnv
from streamkit.plugins import GROUPS, Kind, available, load_plugin

ROOT = Path(__file__).resolve().parents[2]
# The kinds built as ``cls(options, env)``; Lambda event decoders are plain functions with no env.
CONSTRUCTED: tuple[Kind, ...] = ("source", "sink", "processor", "checkpoint", "dead_letter")
BUILT_IN = [
    (info.kind, info.name) for kind in CONSTRUCTED for info in available(kind) if info.distribution == "streamkit"
]


def test_every_constructed_kind_has_built_ins() -> None:
    assert set(CONSTRUCTED) <= set(GROUPS)
    assert {kind for kind, _ in BUILT_IN} == set(CONSTRUCTED)


@pytest.mark.parametrize(("kind", "name"), BUILT_IN, ids=[f"{k}:{n}" for k, n in BUILT_IN])
def test_built_in_constructor_takes_a_plugin_env(kind: Kind, name: str) -> None:
    cls = load_plugin(kind, name, "t")
    hints = typing.get_type_hints(cls.__init__, localns=dict(vars(cls)))  # Options may be nested
    assert hints["env"] in (PluginEnv, PluginEnv | None), f"{cls.__qualname__}.__init__ env: {hints['env']}"


def test_example_plugin_takes_a_plugin_env() -> None:
    # The example package is not installed in the test venv; read its constructor's annotation instead.
    source = (ROOT / "examples/processor-plugin/src/streamkit_geo/__init__.py").read_text()
    inits = [
        node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef) and node.name == "__init__"
    ]
    env_args = [arg for init in inits for arg in init.args.args if arg.arg == "env"]
    assert [ast.unparse(arg.annotation) if arg.annotation else None for arg in env_args] == ["PluginEnv"]


def test_path_is_relative_to_the_pipeline_file_and_at_moves_the_key_path(tmp_path: Path) -> None:
    env = PluginEnv("p", AwsSettings(), tmp_path)
    assert env.path("out/x.ndjson") == (tmp_path / "out" / "x.ndjson").resolve()
    assert env.path("/abs/file") == Path("/abs/file")
    moved = env.at("sinks[2]")
    assert (moved.where, env.where) == ("sinks[2]", "")
    assert moved.pipeline == "p" and moved.base_dir == tmp_path


def test_resolve_names_the_key_path() -> None:
    env = PluginEnv("p", AwsSettings(), Path.cwd())
    assert env.resolve("streamkit.plugin_env:PluginEnv", "x") is PluginEnv
    with pytest.raises(PluginError) as info:
        env.resolve("streamkit.plugin_env:Nope", "processors[0].where.fn")
    assert "processors[0].where.fn" in str(info.value)


def test_a_built_in_prefixes_its_errors_with_the_env_key_path() -> None:
    project = load_plugin("processor", "map", "t")
    with pytest.raises(ConfigError) as info:
        project(project.Options(fields=[]), PluginEnv("p", AwsSettings(), Path.cwd(), "processors[3]"))
    assert "processors[3].fields" in str(info.value)


def test_the_module_is_a_leaf() -> None:
    # A plugin importing PluginEnv must not pull in the builder or the runtime (and their import cycles).
    code = (
        "import sys, streamkit.plugin_env; "
        "print(sorted(m for m in sys.modules if m in ('streamkit.build', 'streamkit.runtime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
