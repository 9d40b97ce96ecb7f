#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite: GPU tests too where a CUDA GPU is present,
# the CPU suite through Triton's interpreter elsewhere. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
"$PY" scripts/build.py --backend "$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" --dev >/dev/null
# Through the interpreter the suite is CPU-bound and single-threaded: one pytest worker per core.
workers=()
[ "${TRITON_INTERPRET:-0}" = 1 ] && workers=(-n auto)
exec "$PY" -m pytest tests -q "${workers[@]}" "$@"
