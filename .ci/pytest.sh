#!/usr/bin/env bash
# Runs the test suite; pytest's exit 5 ("no tests collected") is a failure
# here, reported as such, never a silent success.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest tests -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5); the suite must not be empty" >&2
  exit 1
fi
exit "$rc"
