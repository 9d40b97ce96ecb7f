#!/usr/bin/env bash
# Run tests against other releases of some dependencies: the pins of REQUIREMENTS (a requirements
# file) are installed with --no-deps into .venv-<name> (requirements-<name>.txt) on top of the
# pinned environment, and shadow it for this run only. Usage: scripts/test_pinned.sh REQUIREMENTS
# [pytest arguments]. CI runs it three times:
#   requirements-gen1.txt tests/test_transformers.py        Transformers 5.9, the first call generation
#   requirements-kernels-newest.txt tests/test_package.py   the newest `kernels` loader (0.17): loading and the build
#   requirements-triton-newest.txt tests -m compile_matrix  the newest Triton (3.9), compiling only
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
REQUIREMENTS="$1"
shift
NAME="$(basename "$REQUIREMENTS" .txt)"
SIDE="$ROOT/.venv-${NAME#requirements-}"
if ! cmp -s "$REQUIREMENTS" "$SIDE/$(basename "$REQUIREMENTS")"; then
  rm -rf "$SIDE"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$SIDE" -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$SIDE/"
fi
PYTHONPATH="$SIDE" "$PY" -m pytest -q -p no:cacheprovider "${PYTEST_WORKERS[@]}" "$@"
