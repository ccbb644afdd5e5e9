#!/usr/bin/env bash
# mypy (strict, pyproject.toml) over the package, the tests, the benchmarks and the example plugin.
#
# mypy cannot follow setuptools' editable finder, which maps connectors/ and processors/ into the
# streamkit package, and from the checkout it would find streamkit/ without them. So the tree is installed
# (non-editable) into a scratch folder, and tests/, benchmarks/ and the example plugin are copied beside it:
# every `streamkit.*` import then resolves exactly as it does for users, and `tests.*` / `benchmarks.*`
# as they do for pytest. Errors name the same relative paths as in the checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"; py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
target=$(mktemp -d)
trap 'rm -rf "$target" "$root/build" "$root/streamkit.egg-info"' EXIT
cd "$root"
"$py" -m pip install --quiet --no-deps --no-build-isolation --target "$target" . >/dev/null 2>&1 \
  || "$py" -m pip install --quiet --no-deps --target "$target" . >/dev/null
cp -R tests benchmarks "$target/"
cp -R examples/processor-plugin/src/streamkit_geo "$target/"
# Caches and bytecode copied along would only be noise for mypy.
find "$target/tests" "$target/benchmarks" -name __pycache__ -prune -exec rm -rf {} +
# --explicit-package-bases: tests/ and its folders are namespace packages (no __init__.py), so module names
# come from the folder layout (tests.unit.test_runtime), and same-named test files in unit/ and
# integration/ stay distinct.
cd "$target" && "$py" -m mypy --config-file "$root/pyproject.toml" --explicit-package-bases \
  streamkit streamkit_geo tests benchmarks
