#!/usr/bin/env bash
# The main job: execute every experiment notebook with papermill into book/experiments/, then build
# the report. Extra arguments go to papermill, e.g. `bash scripts/run_book.sh -p seeds 5`.
# ONLY=00 runs just the notebooks whose name contains "00".
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p book/experiments
for notebook in notebooks/[0-9]*.ipynb; do
  name=$(basename "$notebook")
  if [[ -n "${ONLY:-}" && "$name" != *"$ONLY"* ]]; then continue; fi
  echo "== $name"
  papermill "$notebook" "book/experiments/$name" "$@"
done
jupyter-book build book/
echo "The report is at book/_build/html/index.html"
