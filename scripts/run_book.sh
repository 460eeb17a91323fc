#!/usr/bin/env bash
# The main job: execute the report's chapters with papermill into book/experiments/, then build the
# book. `bash scripts/run_book.sh --list` lists the chapters; see scripts/run_book.py for the options
# (--only NAME, --out DIR, -p NAME VALUE, -P CHAPTER NAME VALUE, --all, --log-output).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/run_book.py "$@"
