#!/usr/bin/env bash
# The test suite: the library's tests (with the notebook pair check), every notebook run end to end
# in its quick configuration on synthetic data (nbval), the book built with warnings as errors, and
# the built pages checked.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
python -m pytest tests "$@"
# SNIPNB_SMOKE switches each notebook to a few seconds on synthetic data; nothing is downloaded.
SNIPNB_SMOKE=1 SNIPNB_OFFLINE=1 python -m pytest --nbval-lax -p no:cacheprovider notebooks/
jupyter-book build -W --keep-going book/
# The built pages as a reader sees them: math typeset offline, no unfilled variables, banners.
python scripts/check_book.py
