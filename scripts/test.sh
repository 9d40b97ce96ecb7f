#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite: GPU tests too where a CUDA GPU is present,
# the CPU suite through Triton's interpreter elsewhere. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
"$PY" scripts/build.py --backend "$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" --dev >/dev/null
exec "$PY" -m pytest tests -q "${PYTEST_WORKERS[@]}" "$@"
