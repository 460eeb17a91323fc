#!/usr/bin/env bash
# The test suite: the library's tests (with the notebook pair check), every notebook run end to end
# in its quick configuration on synthetic data (nbval), the book built with warnings as errors, and
# the built pages checked. Arguments go to the library's pytest (e.g. `-k stats`).
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
# SNIPNB_SMOKE switches each notebook to a few seconds on synthetic data; nothing is downloaded.
notebooks=(env SNIPNB_SMOKE=1 SNIPNB_OFFLINE=1 python -m pytest --nbval-lax -p no:cacheprovider notebooks/)
cores=$(python -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")
if [ "$cores" -ge 2 ] && [ -z "${SNIPNB_TESTS_SERIAL:-}" ]; then
  # The two suites share no files, and a second thread makes one only 1.13x faster (tests/test_meta.py
  # and test_snow.py on a 2-core CPU). Side by side, a thread each, each took about 1.5x as long as
  # alone (909 s against 596 s, 847 against 576, on a 2-core AVX2 CPU), so both ended in 15 min
  # instead of 19.5. The library's tests print as they go; the notebooks' log follows when both have
  # ended. SNIPNB_TESTS_SERIAL=1: one after the other, on every thread.
  log=$(mktemp)
  OMP_NUM_THREADS=1 "${notebooks[@]}" > "$log" 2>&1 &
  side=$!
  trap 'kill "$side" 2>/dev/null || true; rm -f "$log"' EXIT
  library=0 notebook=0
  OMP_NUM_THREADS=1 python -m pytest tests "$@" || library=$?
  wait "$side" || notebook=$?
  echo "--- the notebooks (nbval, run beside the library's tests) ---"
  cat "$log"
  if [ "$library" -ne 0 ] || [ "$notebook" -ne 0 ]; then
    echo "failed: library tests exit $library, notebooks exit $notebook" >&2
    exit 1
  fi
else
  python -m pytest tests "$@"
  "${notebooks[@]}"
fi
jupyter-book build -W --keep-going book/
# The built pages as a reader sees them: math typeset offline, no unfilled variables, banners.
python scripts/check_book.py
