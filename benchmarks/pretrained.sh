#!/usr/bin/env bash
# Pretrained BART against from scratch: see benchmarks/pretrained.py
# (--help) for what it trains and measures; it runs with the project's .venv (make install).
#
#   benchmarks/pretrained.sh [--data ../shared/data/ptb] [--out DIR]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || { echo "pretrained.sh: $PYTHON not found: run 'make install' first (or set PYTHON)" >&2; exit 1; }
exec "$PYTHON" "$REPO_ROOT/benchmarks/pretrained.py" "$@"
