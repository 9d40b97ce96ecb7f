#!/usr/bin/env bash
# On a GPU machine without network access: install the `kernels` wheels in .whl/, build, run the whole
# test suite (GPU tests included) and again on the portable path (FINEGRAINED_FP8_PORTABLE=1: no Gluon,
# no dependent launch), the eager host-cost benchmark, optionally the tile sweep, then the benchmark table
# (printed last). Where the newest loader's wheels are in .whl-newest/, the loading tests run again under
# it; where Transformers 5.25's wheels are in .whl-tf525/ (with kernels 0.19), the Transformers tests run
# under it too and the eager model benchmark runs on it. Logs and results go to $OUT (default benchmarks/out).
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
tf525=0
if compgen -G ".whl-tf525/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target .site-tf525 .whl-tf525/*.whl && tf525=1
fi
if [ $tests = 1 ]; then
  python3 -m pytest tests -q -x -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -8
  FINEGRAINED_FP8_PORTABLE=1 python3 -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$OUT/tests-portable.log" | tail -4
  if compgen -G ".whl-newest/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target .site-newest .whl-newest/*.whl
    PYTHONPATH=$PWD/.site-newest python3 -m pytest tests/test_package.py -q -p no:cacheprovider 2>&1 |
      tee "$OUT/tests-kernels-newest.log" | tail -3
  fi
  if [ $tf525 = 1 ]; then
    PYTHONPATH=$PWD/.site-tf525 python3 -m pytest tests/test_transformers.py -q -p no:cacheprovider 2>&1 |
      tee "$OUT/tests-transformers-5.25.log" | tail -3
  fi
fi
python3 benchmarks/host_cost.py --profile --json "$OUT/host_cost.json" 2>&1 | tee "$OUT/host_cost.log"
if [ $tf525 = 1 ]; then
  PYTHONPATH=$PWD/.site-tf525 python3 benchmarks/eager_model.py 2>&1 | tee "$OUT/eager_model.log"
fi
if [ $sweep = 1 ]; then
  python3 benchmarks/sweep_tiles.py 2>&1 | tee "$OUT/sweep.log"
fi
FINEGRAINED_FP8_PORTABLE=1 python3 benchmarks/run.py --only dense moe 2>&1 | tee "$OUT/bench-portable.log" | tail -3
python3 benchmarks/run.py 2>&1 | tee "$OUT/bench.log" | tail -40
cp benchmarks/out/results.json benchmarks/out/results.png "$OUT/" 2>/dev/null
true
