#!/usr/bin/env bash
# Set up (idempotent), make a sample data set and cluster it on an embedded local Ray.
#   bash scripts/demo.sh [COUNT]     (default 1000 digit images: enough for the threshold suggestion)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COUNT="${1:-1000}"
bash scripts/setup.sh
ICAS=".venv/bin/icas"
"$ICAS" datasets make digits sample --count "$COUNT" --seed 0
"$ICAS" cluster sample --method imagehash --batch-size 250 --overwrite
