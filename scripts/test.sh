#!/usr/bin/env bash
# Run the test suite (set-up first). `--fast` skips the slow, live and soak tiers; other arguments
# go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
cd "$here"
if [ "${1:-}" = "--fast" ]; then
    shift
    exec .venv/bin/python -m pytest tests -m "not slow and not live and not soak" "$@"
fi
exec .venv/bin/python -m pytest tests "$@"
