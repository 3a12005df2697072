#!/usr/bin/env bash
# One bounded accelerator check of jaxvis: ceilings, per-layer rates at 224 px in fp32 and
# bf16, the chunk rule, the block steps k, compile times, peak memory and the projected
# full-atlas time (benchmarks/device_check.py; benchmarks/README.md, "Accelerator check").
#
#   bash benchmarks/device_check.sh [--tiny] [--out DIR] [--budget-s S]
#
# Runs the package from this source tree with the machine's own python3 (override with
# PYTHON=...), from any working directory. The Python driver keeps to its own budget
# (420 s; --tiny 200 s); `timeout` is the backstop: SIGTERM at DEVICE_CHECK_LIMIT_S
# (465 s), after which the driver writes what it has, and SIGKILL 15 s later: 8 minutes.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DEVICE_CHECK_CWD="$PWD"  # --out DIR is relative to where this was called
cd "$here/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
limit="${DEVICE_CHECK_LIMIT_S:-465}"
timeout --kill-after=15 "$limit" "${PYTHON:-python3}" -m benchmarks.device_check "$@"
status=$?
if [ "$status" -eq 137 ]; then  # killed before it could print its summary (124: it did)
  echo "device_check: killed at the ${limit} s limit; the JSON holds the parts that finished" >&2
fi
exit "$status"
