#!/usr/bin/env bash
# On a GPU machine without network access: install the `kernels` wheels in .whl/, build, run the whole test suite
# (GPU tests included), optionally the tile sweep, then the benchmark table (printed last). Where the
# newest loader's wheels are carried too (.whl-newest/, from device-wheels/kernels-0.17), the `kernels_ci`
# tests run again under it. Logs and results go to $OUT (default benchmarks/out).
# Usage: scripts/device_run.sh [--sweep] [--no-tests]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site
python3 scripts/build.py --backend cuda --dev >/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
sweep=0; tests=1
for a in "$@"; do case "$a" in --sweep) sweep=1;; --no-tests) tests=0;; esac; done
if [ $tests = 1 ]; then
  python3 -m pytest tests -q -x -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15
  if compgen -G ".whl-newest/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target .site-newest .whl-newest/*.whl
    PYTHONPATH=$PWD/.site-newest python3 -m pytest tests -q -m kernels_ci -p no:cacheprovider -rN 2>&1 |
      tee "$OUT/tests-kernels-newest.log" | tail -3
  fi
fi
if [ $sweep = 1 ]; then
  python3 benchmarks/sweep_tiles.py 2>&1 | tee "$OUT/sweep.log"
fi
python3 benchmarks/run.py 2>&1 | tee "$OUT/bench.log" | tail -40
cp benchmarks/out/results.json benchmarks/out/results.png "$OUT/" 2>/dev/null
true
