"""Mistakes in the pipeline file or the command line end as a configuration error (exit 2) naming the key
path or the option, never as a traceback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from streamkit import cli


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # cli.main configures logging onto the sys.stderr capsys installed; later tests must not write to it.
    yield
    structlog.reset_defaults()


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes) -> tuple[int, str]:
    path = tmp_path / "p.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    code = cli.main(["validate", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def with_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module_text: str, attribute: str) -> str:
    """A pipeline file whose processor is ``<a fresh module>:attribute``, the module holding ``module_text``."""
    name = f"user_module_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(module_text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return (
        "source: {type: generator, count: 10}\n"
        f"processors:\n  - callable: {name}:{attribute}\n"
        "sinks: [{type: memory}]\n"
    )


@pytest.mark.parametrize(
    ("module_text", "expected"),
    [
        ("raise RuntimeError('cannot reach the geo database')\n", "RuntimeError: cannot reach the geo database"),
        ("def enrich(value:\n    return value\n", "SyntaxError"),
        ("import no_such_dependency_xyz\n", "No module named 'no_such_dependency_xyz'"),
    ],
    ids=["raises-on-import", "syntax-error", "missing-dependency"],
)
def test_a_callable_module_that_fails_to_import_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, module_text: str, expected: str
) -> None:
    code, err = validate(tmp_path, capsys, with_callable(tmp_path, monkeypatch, module_text, "enrich"))
    assert code == cli.EXIT_CONFIG
    assert "processors[0].callable: " in err and expected in err, err


def test_a_target_that_is_not_callable_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err = validate(tmp_path, capsys, with_callable(tmp_path, monkeypatch, "LIMIT = 42\n", "LIMIT"))
    assert code == cli.EXIT_CONFIG
    assert "processors[0].callable: " in err and "not callable" in err, err


def test_a_class_whose_constructor_fails_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "class Enrich:\n    def __init__(self):\n        raise ValueError('no table')\n"
    code, err = validate(tmp_path, capsys, with_callable(tmp_path, monkeypatch, module, "Enrich"))
    assert code == cli.EXIT_CONFIG
    assert "processors[0].options: " in err and "ValueError: no table" in err, err


def test_a_pipeline_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latin1 = "name: caf\xe9\nsource: {type: generator}\nsinks: [{type: memory}]\n".encode("latin-1")
    code, err = validate(tmp_path, capsys, latin1)
    assert code == cli.EXIT_CONFIG
    assert f"{tmp_path / 'p.yaml'}: " in err and "not UTF-8" in err and "line 1" in err, err


def test_an_unknown_log_level_is_a_usage_error_listing_the_levels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--log-level", "BOGUS", "validate", str(tmp_path / "p.yaml")])
    assert exited.value.code == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "--log-level" in err and "BOGUS" in err and "DEBUG" in err and "Traceback" not in err


def test_log_levels_are_accepted_in_any_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("source: {type: generator, count: 10}\nsinks: [{type: memory}]\n")
    assert cli.main(["--log-level", "warning", "validate", str(path)]) == cli.EXIT_OK
