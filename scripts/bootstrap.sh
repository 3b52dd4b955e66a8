#!/usr/bin/env bash
# Install negbench and everything it needs into ./.venv (Python 3.11 or newer).
#   bash scripts/bootstrap.sh         # the package and its dependencies
#   bash scripts/bootstrap.sh --dev   # ... plus pytest and ruff
# As root on Debian it also installs the real Fashion-MNIST (package dataset-fashion-mnist);
# elsewhere the fashion-mnist suite looks in --data-dir or downloads through torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: negbench needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${1:-}" = "--dev" ]; then target=".[dev]"; else target="."; fi
.venv/bin/python -m pip install --quiet --editable "$target"

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null 2>&1; then
  if ! { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1; then
    echo "bootstrap: could not install dataset-fashion-mnist; fashion-mnist will need" \
         "--data-dir or a network" >&2
  fi
fi
echo "bootstrap: negbench installed in .venv ($(.venv/bin/python --version))"
