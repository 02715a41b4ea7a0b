#!/usr/bin/env bash
# Run the assistant (set-up first, quick when already done). Arguments go to asr_llm_tts.py.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
exec "$here/.venv/bin/python" "$here/asr_llm_tts.py" "$@"
