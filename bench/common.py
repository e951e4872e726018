"""What every benchmark shares: where a result was measured, checks that it measured what it claims, processes.

A figure is only worth documenting if the run that produced it did what its scenario says (a "semantic hit"
scenario whose requests all missed measures misses) and if it names the code it was measured at. So:

* `provenance()` names the commit (and whether `semproxy/` or `bench/` had uncommitted changes), the date
  and the machine; `write_results` stores it under the key "provenance", beside the script's own keys.
* `Checks` collects a run's expectations; `run_main` turns a failed one into "FAIL: ..." and exit status 1.
  A script whose scenario did not produce its outcome raises before it writes anything; a script whose
  failure is the finding (a soak that saw a 5xx) writes its results, with the checks, and then raises.
* `process` / `serve` / `fake_upstream` start the processes a benchmark talks to, and `serve` runs the
  semproxy of a given source tree (this one by default), whatever version is installed.

`bench/stale.py` reads the provenance back to tell which results no longer describe the code.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Results files are written by the runs themselves: a fresh one must not make the next run look modified.
WATCHED = ("semproxy", "bench", ":(exclude)bench/results")


class OutcomeError(AssertionError):
    """A scenario did not produce the outcome it measures, so its figures would describe something else."""


def git(*args: str, repo: Path = REPO) -> str:
    """The output of a git command in `repo`; raises OutcomeError if git cannot answer."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise OutcomeError(f"git {' '.join(args)} failed ({detail.strip()}): a result without a commit "
                           "is not a result; run the benchmarks from a git checkout") from exc
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[tuple[Path, str]]:
    """(tree, commit): git commit `ref` checked out into a temporary git worktree, removed when the block ends."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    folder = Path(tempfile.mkdtemp(prefix="semproxy-baseline-"))
    tree = folder / "tree"
    git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree, commit
    finally:
        git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(folder, ignore_errors=True)


def provenance() -> dict[str, Any]:
    """Where and on what this run is measured: take it at the start, so a run without git fails at once."""
    script = Path(sys.argv[0]).resolve()
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", *WATCHED)),
        "script": str(script.relative_to(REPO)) if script.is_relative_to(REPO) else script.name,
        "argv": sys.argv[1:],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
    }


def write_results(path: Path, data: Mapping[str, Any], origin: Mapping[str, Any] | None = None) -> None:
    """`data` as JSON with its provenance under "provenance", replacing `path` in one step."""
    payload = {**data, "provenance": dict(origin if origin is not None else provenance())}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")  # a killed run leaves the old file whole, never half a new one
    partial.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", file=sys.stderr)


class Checks:
    """The expectations of one run, collected so that the report names every one that failed."""

    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[str] = []

    def expect(self, condition: bool, message: str) -> bool:
        """Record `message` as failed unless `condition` holds (it names the scenario and what was seen)."""
        (self.passed if condition else self.failed).append(message)
        return condition

    def expect_share(self, scenario: str, outcomes: Mapping[str, int], wanted: str, *, at_least: float = 1.0,
                     what: str = "requests") -> bool:
        """At least `at_least` of the counted `outcomes` are `wanted`."""
        total, got = sum(outcomes.values()), outcomes.get(wanted, 0)
        others = ", ".join(f"{n} {name}" for name, n in sorted(outcomes.items(), key=lambda kv: -kv[1])
                           if name != wanted)
        share = "all" if at_least >= 1.0 else f"at least {at_least:.0%}"
        seen = f"{total - got} of {total} {what} were not {wanted} ({others})" if total else f"no {what} counted"
        return self.expect(total > 0 and got >= at_least * total, f"{scenario}: {seen}; expected {share} {wanted}")

    def record(self) -> dict[str, Any]:
        """What to store beside the figures."""
        return {"ok": not self.failed, "passed": len(self.passed), "failed": self.failed}

    def raise_if_failed(self) -> None:
        if self.failed:
            raise OutcomeError(f"{len(self.failed)} of {len(self.failed) + len(self.passed)} expectations failed:"
                               + "".join(f"\n  - {message}" for message in self.failed))

    def summary(self) -> str:
        return f"all {len(self.passed)} expectations met" if not self.failed else f"{len(self.failed)} failed"


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run a benchmark: a failed expectation ends it with "FAIL: ..." on stderr and exit status 1."""
    try:
        code = main()
    except OutcomeError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code or 0)


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pythonpath(source: Path) -> str:
    """PYTHONPATH that makes `source`'s packages win over installed ones (an editable install included)."""
    return os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))


@contextlib.contextmanager
def process(command: list[str], ready_url: str, *, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 180) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` (with this environment plus `env`) until the block ends, once `ready_url` answers 200."""
    with tempfile.TemporaryFile() as log:
        started = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=cwd, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            _wait(ready_url, started, log, timeout)
            yield started
        finally:
            started.terminate()
            started.wait(timeout=30)


def _wait(url: str, started: subprocess.Popen[bytes], log: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{url} exited early with {started.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def serve(port: int, data_dir: str | Path, *args: str, env: Mapping[str, str] | None = None,
          source: Path = REPO) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """`semproxy serve` on 127.0.0.1:`port`, running the code of the tree `source`, ready once /healthz is."""
    command = [sys.executable, "-m", "semproxy", "serve", "--port", str(port), "--data-dir", str(data_dir), *args]
    return process(command, f"http://127.0.0.1:{port}/healthz", cwd=source,
                   env={"HF_HUB_OFFLINE": "1", **(env or {}), "PYTHONPATH": pythonpath(source)})


def fake_upstream(port: int, *args: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """bench/fake_upstream.py on 127.0.0.1:`port` (base URL http://127.0.0.1:PORT/v1)."""
    return process([sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(port), *args],
                   f"http://127.0.0.1:{port}/v1/models")
