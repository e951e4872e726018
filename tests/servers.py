"""Real servers on loopback for tests that must see bytes on the wire (streaming, disconnects, restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn


def free_socket() -> socket.socket:
    """A listening socket on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A port that was free a moment ago (for subprocesses that bind it themselves)."""
    with free_socket() as sock:
        return int(sock.getsockname()[1])


class ThreadServer:
    """uvicorn serving an ASGI app in a background thread with its own event loop."""

    def __init__(self, app: Any, *, lifespan: str = "on") -> None:
        self.socket = free_socket()
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve(sockets=[self.socket]))

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.socket.close()


@contextlib.contextmanager
def semproxy_process(data_dir: Path, upstream: str, *, extra: tuple[str, ...] = (),
                     env_extra: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`semproxy serve` as a child process, waited on until /healthz says ready."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SEMPROXY_LOG_LEVEL": "warning",
           "SEMPROXY_COMPRESSION_ENABLED": "false", **(env_extra or {})}
    arguments = ("--port", str(port), "--upstream", upstream, "--data-dir", str(data_dir), *extra)
    with serve_process(arguments, env=env, port=port) as process:
        yield process


@contextlib.contextmanager
def serve_process(arguments: tuple[str, ...], *, env: dict[str, str], port: int,
                  cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`semproxy serve ARGUMENTS` with exactly this environment, listening on `port` (by its arguments or its
    environment), waited on until /healthz says ready; terminated at the end.

    The child writes its log to a file, not a pipe: a pipe nobody reads fills up and blocks a chatty child
    mid-start. If the test fails, the log's end is printed with the failure."""
    command = [sys.executable, "-m", "semproxy", "serve", *arguments]
    with tempfile.NamedTemporaryFile(prefix="semproxy-child-", suffix=".log") as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        process.log = Path(log.name)  # type: ignore[attr-defined]
        try:
            wait_healthy(process.url, process)  # type: ignore[attr-defined]
            yield process
        except BaseException:
            print(f"--- the end of {' '.join(arguments)}'s log ---\n{child_log(process)}", file=sys.stderr)
            raise
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def child_log(process: subprocess.Popen[bytes], *, tail: int = 8000) -> str:
    """The end of a child's log (serve_process's file; a pipe's content for other children)."""
    path = getattr(process, "log", None)
    if path is not None:
        return Path(path).read_text(errors="replace")[-tail:]
    return process.stdout.read().decode(errors="replace")[-tail:] if process.stdout else ""


def wait_healthy(url: str, process: subprocess.Popen[bytes], *, timeout: float = 120) -> None:
    """Poll /healthz until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"semproxy exited with {process.returncode}:\n{child_log(process)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"semproxy did not become healthy in {timeout:.0f} s:\n{child_log(process)}")
