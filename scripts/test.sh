#!/usr/bin/env bash
# Run the whole test suite (set-up first). Arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
cd "$here"
exec .venv/bin/python -m pytest tests "$@"
