#!/usr/bin/env bash
# Create (or reuse) ./.venv with mmcl and its test tools. Idempotent: a second run takes seconds.
# torch is pinned to 2.13.0, the CPU build; other versions pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.mmcl-installed
# (re)install when the project's metadata or the compiled reader's source changed (an editable
# install builds mmcl/data/_ntuparse*.so next to its source; without a compiler it is skipped
# and the NumPy reader runs, so a missing .so alone is no reason to reinstall on every run)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ mmcl/data/_ntuparse.c -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
