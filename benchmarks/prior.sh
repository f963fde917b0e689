#!/usr/bin/env bash
# Fitted priors and prior-sample quality: see benchmarks/prior.py (--help) for what it trains
# and measures; it runs with the project's .venv (make install).
#
#   benchmarks/prior.sh [--points "synth;ptb, BART init, fb 0.5"] [--pretrained-bart CKPT]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || { echo "prior.sh: $PYTHON not found: run 'make install' first (or set PYTHON)" >&2; exit 1; }
exec "$PYTHON" "$REPO_ROOT/benchmarks/prior.py" "$@"
