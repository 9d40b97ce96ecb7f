# Sourced by the scripts in this folder: picks the Python that runs the project.
# On a machine whose python3 already has torch with a CUDA GPU, that one is used
# as it is. Anywhere else a pinned CPU environment is created once in .venv from requirements-ci.txt
# and the kernels run through Triton's interpreter.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  PY=python3
else
  if [ ! -x "$ROOT/.venv/bin/python" ] || ! cmp -s "$ROOT/requirements-ci.txt" "$ROOT/.venv/requirements-ci.txt"; then
    echo "Creating the pinned CPU environment in .venv (requirements-ci.txt; first run only, a few minutes)" >&2
    python3 -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-ci.txt"
    cp "$ROOT/requirements-ci.txt" "$ROOT/.venv/requirements-ci.txt"
  fi
  PY="$ROOT/.venv/bin/python"
  export TRITON_INTERPRET=1
fi
export PY ROOT
# pytest arguments for the scripts that run tests: through the interpreter the suite is CPU-bound and
# single-threaded, so one worker per core.
PYTEST_WORKERS=()
if [ "${TRITON_INTERPRET:-0}" = 1 ]; then
  PYTEST_WORKERS=(-n auto)
fi
