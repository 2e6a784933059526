#!/usr/bin/env bash
# Set up (idempotent, test tools included) and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k store -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PROBE_SETUP_TESTS=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# One worker per core, each taking whole test files (a file's fixtures are made once); the
# dashboard store is built once for all workers (tests/dashboard_fixtures.py).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n auto --dist loadfile "$@"
