"""The ECS example is consistent with the code: the Dockerfile lints clean, the task definition fits the
shutdown grace period and health endpoint, the policies are well-formed, the baked pipeline validates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ECS = Path(__file__).resolve().parents[2] / "examples" / "ecs"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(ECS / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ECS / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and 'ENTRYPOINT ["streamkit"' in text


def test_task_definition_matches_the_pipeline() -> None:
    task = json.loads((ECS / "task-definition.json").read_text())
    container = task["containerDefinitions"][0]
    pipeline = yaml.safe_load((ECS / "pipeline.yaml").read_text())
    grace = pipeline["runtime"]["shutdown_grace_s"]
    assert container["stopTimeout"] > grace, "ECS must wait longer than the drain takes"
    assert "/health/live" in " ".join(container["healthCheck"]["command"])
    assert container["user"] == "10001:10001"
    names = {e["name"] for e in container["environment"]}
    text = (ECS / "pipeline.yaml").read_text()
    for required in ("STREAM_NAME", "BUCKET", "AWS_REGION"):
        assert "${" + required + "}" in text and required in names


def test_iam_policies_are_well_formed_and_scoped() -> None:
    for path in (ECS / "iam").glob("*.json"):
        policy = json.loads(path.read_text())
        assert policy["Version"] == "2012-10-17"
        for statement in policy["Statement"]:
            assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, path.name
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            assert all(":" in a and "*" not in a for a in actions), f"{path.name}: no wildcard actions"


def test_baked_pipeline_validates_with_the_task_environment() -> None:
    env = {**os.environ, "STREAM_NAME": "orders", "BUCKET": "example-data-lake", "AWS_REGION": "us-east-1"}
    result = subprocess.run([sys.executable, "-m", "streamkit", "validate", str(ECS / "pipeline.yaml")],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_image_pins_the_version_this_tree_builds() -> None:
    import tomllib

    version = tomllib.loads((ECS.parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert f'"streamkit[kafka,parquet,prometheus]=={version}"' in (ECS / "Dockerfile").read_text()
