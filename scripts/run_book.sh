#!/usr/bin/env bash
# The main job: execute the report's chapters with papermill into book/experiments/, publish each one's
# runs as book/data/<chapter>.csv.gz, then build the book. `bash scripts/run_book.sh --list` lists the
# chapters; see scripts/run_book.py for the options (--only GLOB, --out DIR, --quick, --from-tables, --extend,
# -p NAME VALUE, -P CHAPTER NAME VALUE, --all, --log-output). It exits non-zero on any mistake (before
# anything runs) and when a chapter fails.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/run_book.py "$@"
