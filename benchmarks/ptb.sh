#!/usr/bin/env bash
# Penn Treebank benchmark: bart_vae against fairseq's transformer_lm. See benchmarks/ptb.py
# (--help) for what it trains and measures; it runs with the project's .venv (make install).
#
#   benchmarks/ptb.sh --budget cpu [--data ../shared/data/ptb] [--sweep]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || { echo "ptb.sh: $PYTHON not found: run 'make install' first (or set PYTHON)" >&2; exit 1; }
exec "$PYTHON" "$REPO_ROOT/benchmarks/ptb.py" "$@"
