#!/usr/bin/env bash
# The main job. On a CUDA GPU: the benchmark table of every kernel next to its peers
# (JSON and PNG under benchmarks/out/). On a CPU: a small demo through Triton's interpreter,
# checked against the plain-torch reference. Extra arguments go to benchmarks/run.py.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
"$PY" scripts/build.py --backend "$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" --dev >/dev/null
exec "$PY" benchmarks/run.py "$@"
