#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. CI runs exactly this (.ci/run).
#   bash scripts/test.sh                 fast suite
#   ICAS_RUN_SLOW=1 bash scripts/test.sh  slow tests too
# Extra arguments go to pytest, e.g. bash scripts/test.sh -k storage
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ICAS_SETUP_BROWSER=1 bash scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest --durations=25 "$@"
