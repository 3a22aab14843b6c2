#!/usr/bin/env bash
# The README's main command: set up a fresh machine and run the end-to-end demo on real HER2+ data.
# Data: $STAMP_ST_DATA, else ../shared/data. Output: stamp_st_demo/report/report.html
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
stamp-st doctor || true
time stamp-st demo "$@"
