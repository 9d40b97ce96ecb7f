#!/usr/bin/env bash
# The Transformers integration tests against the first call generation (Transformers 5.9:
# fp8_act_quant + w8a8_fp8_matmul*). Its pins (requirements-gen1.txt) go into .venv-gen1 and shadow
# the pinned environment for this run only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
GEN1="$ROOT/.venv-gen1"
if ! cmp -s requirements-gen1.txt "$GEN1/requirements-gen1.txt"; then
  rm -rf "$GEN1"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$GEN1" -r requirements-gen1.txt
  cp requirements-gen1.txt "$GEN1/requirements-gen1.txt"
fi
PYTHONPATH="$GEN1" "$PY" -m pytest tests/test_transformers.py -q -p no:cacheprovider "$@"
