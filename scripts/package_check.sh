#!/usr/bin/env bash
# What a user installing from the package index gets: build the wheel, install it with its extras into a
# clean virtualenv outside the checkout, and run what the README promises there: validate every example
# pipeline, the synthetic shard benchmark with its baselines, and the demo. Any difference between a checkout
# and an installed package (a file not shipped, an import of the repo layout) fails here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"
base="${PACKAGE_CHECK_PYTHON:-python3}"
work=$(mktemp -d)
trap 'rm -rf "$work" "$root/build"' EXIT

"$py" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/dist" "$root" >/dev/null
wheel=$(ls "$work"/dist/streamkit-*.whl)
"$base" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel[bench,demo,iceberg,kafka,parquet,prometheus]" \
  >"$work/pip.log" 2>&1 || { grep -v "is ignored: it is neither" "$work/pip.log"; exit 1; }
sk="$work/venv/bin/streamkit"

cd "$work"  # nothing of the checkout is on the path from here
echo "package-check: installed $(basename "$wheel") in a clean venv; running from $work"
"$work/venv/bin/python" - "$root" <<'PY'
import sys, streamkit
assert not streamkit.__file__.startswith(sys.argv[1]), f"imported from the checkout: {streamkit.__file__}"
PY
# The values a deployment would set for the examples' ${VARIABLES} without defaults.
export MSK_BOOTSTRAP=b-1.example:9098 SCHEMA_REGISTRY_URL=http://127.0.0.1:8081 BUCKET=example-bucket \
  STREAM_NAME=orders DELIVERY_STREAM=orders AWS_REGION=us-east-1
for pipeline in "$root"/examples/pipelines/*.yaml "$root"/examples/ecs/pipeline.yaml \
    "$root"/examples/lambda/function/pipeline.yaml; do
  "$sk" validate "$pipeline" >/dev/null || { echo "package-check: validate failed for $pipeline"; exit 1; }
done
echo "package-check: every example pipeline validates"

"$sk" bench --source synthetic --records 20000 --json "$work/bench.json" >"$work/bench.log" 2>&1 \
  || { cat "$work/bench.log"; exit 1; }
"$work/venv/bin/python" - "$work/bench.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
assert not report["skipped"], f"bench skipped parts from an installed package: {report['skipped']}"
names = [row["name"] for row in report["baselines"]]
assert any("Powertools" in n for n in names) and any("boto3" in n for n in names), names
ours = [row["name"] for row in report["streamkit"]]
assert ours, "no streamkit figures"
print(f"package-check: bench ran {', '.join(ours)} beside {', '.join(names)}")
PY

"$sk" demo --records 2000 --partitions 2 --output "$work/demo" >"$work/demo.log" 2>&1 \
  || { cat "$work/demo.log"; exit 1; }
grep -q "produced 2,000 events" "$work/demo.log" || { cat "$work/demo.log"; exit 1; }
echo "package-check: demo ran from the installed package ($(grep -c 's3://' "$work/demo.log") objects listed)"
