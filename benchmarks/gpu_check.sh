#!/usr/bin/env bash
# The one-command GPU check (benchmarks/gpu_check.py, whose docstring says what it runs and writes), from any
# folder: this checkout's dpbook, $PYTHON or python; arguments pass through (--reduced, --budget, --parts ...).
#   bash benchmarks/gpu_check.sh            # on one NVIDIA GPU: under 8 minutes
#   bash benchmarks/gpu_check.sh --reduced  # tiny sizes: does everything run here?
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
