#!/usr/bin/env bash
# Steering with the latent (transfer, analogies, few labels): see benchmarks/control.py
# (--help) for what it trains and measures; it runs with the project's .venv (make install).
#
#   benchmarks/control.sh [--corpora "yelp;synth"] [--setting "BART init, fb 0.5"]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || { echo "control.sh: $PYTHON not found: run 'make install' first (or set PYTHON)" >&2; exit 1; }
exec "$PYTHON" "$REPO_ROOT/benchmarks/control.py" "$@"
