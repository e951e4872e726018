"""Run the LiteLLM proxy as a rival to semproxy, for side-by-side benchmarks.

Install it first (once per machine; idempotent): ``bash bench/rivals/install.sh``.
This module uses the standard library and httpx only, so semproxy's own venv can import it::

    from bench.rivals.litellm_proxy import run_litellm   # or put bench/rivals on sys.path

    with run_litellm("http://127.0.0.1:18080/v1", port=4010, cache=True) as base_url:
        # base_url == "http://127.0.0.1:4010/v1": point an OpenAI client there, model "bench-model".
        ...

The proxy runs from ``<repo>/.venv-rivals`` in its own process group, with a config written to a temp
dir: one model ``bench-model`` -> ``openai/bench-model`` at the given upstream, and with ``cache=True``
LiteLLM's in-memory cache (``cache_params.type: local``, an exact-match cache). Start-up takes several
seconds (LiteLLM imports a lot); the context manager returns only once the proxy answers.

Settings, and why (everything else is left at LiteLLM's defaults, e.g. one uvicorn worker):
- ``LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true``: the proxy refuses to start without a
  master key otherwise; the benchmark sends no key, as it does to semproxy.
- ``LITELLM_LOG=ERROR``: LiteLLM's documented log-level switch. It also sets uvicorn's level, so no
  access line is logged per request; the default would log each request and slow the rival unfairly.
- ``LITELLM_LOCAL_*=true`` (model cost map, Anthropic beta headers, blog posts, policy templates,
  autorouter presets): use the copies bundled in the package instead of fetching them from GitHub.
- No ``DATABASE_URL``/Redis/master-key variables are passed on, so the proxy runs without a DB.
- ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` and ``NO_PROXY`` for loopback: no model hub, and
  loopback traffic never goes through an HTTP proxy that the caller's environment may name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
RIVALS_VENV = REPO_ROOT / ".venv-rivals"
HOST = "127.0.0.1"
MODEL_NAME = "bench-model"

OFFLINE_QUIET_ENV: Mapping[str, str] = {
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "LITELLM_LOG": "ERROR",
    "LITELLM_LOCAL_MODEL_COST_MAP": "true",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "true",
    "LITELLM_LOCAL_BLOG_POSTS": "true",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "true",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_PROXY": f"{HOST},localhost",
    "no_proxy": f"{HOST},localhost",
    "PYTHONUNBUFFERED": "1",
}
# Variables that would make the proxy use a DB, Redis or a master key, or route traffic elsewhere.
DROPPED_ENV_PREFIXES = ("DATABASE_", "DIRECT_URL", "REDIS_", "LITELLM_", "STORE_MODEL_IN_DB", "UI_")
DROPPED_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def litellm_executable(venv: Path = RIVALS_VENV) -> Path:
    """Path of the ``litellm`` CLI in the rivals' venv; raise if install.sh has not been run."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        raise FileNotFoundError(f"{exe} not found: run `bash bench/rivals/install.sh` first")
    return exe


def proxy_config(upstream_base_url: str, *, cache: bool) -> str:
    """LiteLLM proxy config (YAML; written as JSON, which is valid YAML) for one pass-through model."""
    config: dict[str, object] = {
        "model_list": [
            {
                "model_name": MODEL_NAME,
                "litellm_params": {
                    "model": f"openai/{MODEL_NAME}",
                    "api_base": upstream_base_url,
                    "api_key": "sk-bench-dummy",
                },
            }
        ],
        "litellm_settings": {"cache": True, "cache_params": {"type": "local"}} if cache else {},
    }
    return json.dumps(config, indent=2)


def proxy_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment, less DB/Redis/proxy settings, plus the offline-and-quiet settings."""
    source = os.environ if base is None else base
    env = {
        key: value
        for key, value in source.items()
        if not key.startswith(DROPPED_ENV_PREFIXES) and key not in DROPPED_ENV
    }
    env.update(OFFLINE_QUIET_ENV)
    return env


def ensure_port_free(port: int) -> None:
    """Raise if something listens on 127.0.0.1:port: the readiness poll would be answered by it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            raise RuntimeError(f"port {port} on {HOST} is in use: {error}") from error


def wait_until_ready(base_url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Poll the proxy's liveness route until it answers; raise with its log if it dies or times out."""
    url = base_url.removesuffix("/v1") + "/health/liveliness"
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"litellm exited with code {process.returncode}:\n{_tail(log_path)}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"litellm did not answer on {url} within {timeout} s:\n{_tail(log_path)}")


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the proxy's process group (uvicorn shuts down gracefully), SIGKILL it after ``grace`` s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def run_litellm(
    upstream_base_url: str,
    *,
    port: int,
    cache: bool,
    startup_timeout: float = 120.0,
    venv: Path = RIVALS_VENV,
) -> Iterator[str]:
    """Start the LiteLLM proxy on 127.0.0.1:port in front of ``upstream_base_url``; yield its base URL.

    ``upstream_base_url`` is an OpenAI base URL such as ``http://127.0.0.1:18080/v1``. The yielded URL
    ends in ``/v1``; the model to request is ``bench-model``. The proxy's output goes to a log file
    in the temp dir, shown in the error if it fails to start. It is stopped when the block exits.
    """
    exe = litellm_executable(venv)
    ensure_port_free(port)
    with tempfile.TemporaryDirectory(prefix="litellm-bench-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(proxy_config(upstream_base_url, cache=cache))
        log_path = Path(tmp) / "litellm.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(exe), "--config", str(config_path), "--host", HOST, "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=proxy_env(),
                cwd=tmp,
                start_new_session=True,
            )
        base_url = f"http://{HOST}:{port}/v1"
        try:
            wait_until_ready(base_url, process, log_path, startup_timeout)
            yield base_url
        finally:
            stop(process)
