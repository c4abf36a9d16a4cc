#!/usr/bin/env bash
# The labelling client installs and runs with the base package and the `label` extra only:
# a fresh venv, `pip install '.[label]'`, `icas label --help`; neither Ray nor torch may be
# installed there, nor imported by the command. Exits non-zero on any failure.
#
#   scripts/check_label_install.sh            # from the repository (any working directory)
#   PYTHON=python3.11 scripts/check_label_install.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
tmp="$(mktemp -d -t icas-label-install-XXXXXX)"
trap 'rm -rf "$tmp"' EXIT

echo "fresh venv in $tmp" >&2
"$python" -m venv "$tmp/venv"
pip="$tmp/venv/bin/pip"
"$pip" install --quiet --upgrade pip >&2
# A copy of the repository: the build writes egg-info/build folders, which must not land in
# the working tree other people use.
mkdir "$tmp/src"
(cd "$repo" && git ls-files -z | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$tmp/src"
"$pip" install --quiet "$tmp/src[label]" >&2

fail=0
for pkg in ray torch; do
  if "$tmp/venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)"; then
    echo "FAIL: $pkg is installed by icas-ray[label]" >&2
    fail=1
  fi
done

help="$("$tmp/venv/bin/icas" label --help)"
for word in open export; do
  if ! grep -q "$word" <<<"$help"; then
    echo "FAIL: icas label --help does not list '$word'" >&2
    fail=1
  fi
done
"$tmp/venv/bin/icas" label open --help >/dev/null

# The command's imports, as a user runs it: neither Ray nor torch.
"$tmp/venv/bin/python" - <<'EOF' || fail=1
import sys
from click.testing import CliRunner
from icas_ray.cli import cli
import icas_ray.client.app, icas_ray.client.server  # the server's modules load too
r = CliRunner().invoke(cli, ["label", "--help"])
assert r.exit_code == 0, r.output
heavy = sorted(m for m in ("ray", "torch") if m in sys.modules)
if heavy:
    sys.exit(f"FAIL: icas label imported {heavy}")
EOF

if [ "$fail" -ne 0 ]; then
  echo "check_label_install: FAILED" >&2
  exit 1
fi
echo "check_label_install: ok (icas-ray[label] without Ray or torch; icas label --help works)"
