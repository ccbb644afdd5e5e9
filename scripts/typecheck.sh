#!/usr/bin/env bash
# mypy cannot follow setuptools' editable finder, which maps connectors/ and processors/ into the
# streamkit package. Type-check a real (non-editable) install of the tree instead, so every import
# resolves exactly as it does for users.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"; py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
target=$(mktemp -d)
trap 'rm -rf "$target" "$root/build" "$root/streamkit.egg-info"' EXIT
cd "$root"
"$py" -m pip install --quiet --no-deps --no-build-isolation --target "$target" . >/dev/null 2>&1 \
  || "$py" -m pip install --quiet --no-deps --target "$target" . >/dev/null
cd "$target" && "$py" -m mypy --config-file "$root/pyproject.toml" -p streamkit
