#!/usr/bin/env bash
# Install negbench and everything it needs into ./.venv (Python 3.11 or newer).
#   bash scripts/bootstrap.sh         # the package and its dependencies
#   bash scripts/bootstrap.sh --dev   # ... plus pytest and ruff
# As root on Debian it also installs the real Fashion-MNIST (package dataset-fashion-mnist), and with
# --dev PostgreSQL and Chromium for the tests; elsewhere the fashion-mnist suite looks in --data-dir
# or downloads through torchvision, and the tests that need a server or a browser say why they skip.
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

# Debian packages, as root only: the real Fashion-MNIST; with --dev also what the tests use:
# PostgreSQL (the shared work queue of `negbench worker`) and Chromium (the report's HTML test).
debs=()
[ -d /usr/share/datasets/fashion-mnist ] || debs+=(dataset-fashion-mnist)
if [ "${1:-}" = "--dev" ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || debs+=(postgresql)
  command -v chromium >/dev/null 2>&1 || debs+=(chromium)
fi
if [ ${#debs[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
           --no-install-recommends "${debs[@]}"; } >/dev/null 2>&1; then
    echo "bootstrap: could not install ${debs[*]} with apt-get; fashion-mnist will need" \
         "--data-dir or a network, and the PostgreSQL and Chromium tests will skip" >&2
  fi
fi
echo "bootstrap: negbench installed in .venv ($(.venv/bin/python --version))"
