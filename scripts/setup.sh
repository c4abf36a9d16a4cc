#!/usr/bin/env bash
# Create .venv and install icas-ray with every extra the demo and the tests need.
# Idempotent: reruns only when pyproject.toml changed since the last successful install.
# Usage: bash scripts/setup.sh            (from the repository root or anywhere)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.icas-installed"
WANT="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "[setup] .venv is up to date" >&2
else
    echo "[setup] installing icas-ray and its dependencies (a few minutes the first time)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    # torch/torchvision are pinned to the builds this workplace serves from local disk; an
    # unpinned torch would pull the newest release with several GB of CUDA packages.
    "$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    "$VENV/bin/python" -m pip install --quiet -e ".[all,test]" "torch==2.14.1" "torchvision==0.29.1"
    echo "$WANT" > "$STAMP"
fi

# Headless Chromium for the browser tests (Playwright drives the system build; its own
# browser download cannot work offline). Only when asked, and only as root with apt-get.
if [ "${ICAS_SETUP_BROWSER:-0}" = "1" ] && [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = "0" ]; then
        echo "[setup] installing Debian chromium for the browser tests" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
            || echo "[setup] could not install chromium; browser tests will be skipped" >&2
    else
        echo "[setup] /usr/bin/chromium missing and apt-get unavailable; browser tests will be skipped" >&2
    fi
fi
