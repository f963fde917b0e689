#!/usr/bin/env bash
# Reconstruction against training time on Yelp: see benchmarks/recon.py
# (--help) for what it trains and measures; it runs with the project's .venv (make install).
#
#   benchmarks/recon.sh [--candidates "baseline;batch 1024"] [--kl "ae;fb0.5"] [--init scratch]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || { echo "recon.sh: $PYTHON not found: run 'make install' first (or set PYTHON)" >&2; exit 1; }
exec "$PYTHON" "$REPO_ROOT/benchmarks/recon.py" "$@"
