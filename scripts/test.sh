#!/usr/bin/env bash
# Set up ./.venv (idempotent) and run the test suite on 2 processes.
# Tests that need the real recordings in ../shared/data skip, saying why, when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q -n 2 "${@:-tests}"
