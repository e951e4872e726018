"""Which results in bench/results/ no longer describe the code at HEAD.

Each results file records the commit it was measured at (under "provenance", see bench/common.py). A file
is stale when it records no commit, when it was measured with uncommitted changes in semproxy/ or bench/,
or when semproxy/, the script that wrote it or a server the script runs (USES) differs between that commit
and HEAD. Prints one line per file; exit status 1 if any is stale (regenerate it at the commit that documents
it).

    .venv/bin/python bench/stale.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import git, run_main  # noqa: E402

RESULTS = REPO / "bench" / "results"
# Results files whose name is not their script's (older files record no script of their own).
WRITTEN_BY = {"faiss_scale_quick.json": "bench/faiss_scale.py",
              "hostile_upstream.json": "bench/hostile_upstream_bench.py"}
# Files besides semproxy/ whose change makes a script's results stale (the servers it measures against).
USES = {"bench/hostile_upstream_bench.py": ("bench/hostile_upstream.py",)}


def script_of(path: Path, record: dict[str, Any]) -> str:
    """The script that wrote a results file: as recorded, else by name."""
    recorded = record.get("provenance", {}).get("script")
    return str(recorded) if recorded else WRITTEN_BY.get(path.name, f"bench/{path.stem}.py")


def staleness(path: Path) -> tuple[bool, str]:
    """(stale, why): whether the file no longer describes HEAD."""
    record = json.loads(path.read_text(encoding="utf-8"))
    origin = record.get("provenance") if isinstance(record, dict) else None
    if not origin or not origin.get("commit"):
        return True, "records no commit"
    commit, script = origin["commit"], script_of(path, record)
    at = f"measured at {commit[:10]}"
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                      capture_output=True).returncode != 0:
        return True, f"{at}, which this repository does not have"
    if origin.get("dirty"):
        return True, f"{at} with uncommitted changes in semproxy/ or bench/"
    changed = git("diff", "--name-only", commit, "HEAD", "--", "semproxy", script, *USES.get(script, ())).splitlines()
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        return True, f"{at}; {shown} changed since"
    return False, f"{at}; semproxy/ and {script} are the same at HEAD"


def main() -> int:
    files = sorted(RESULTS.glob("*.json"))
    stale = 0
    for path in files:
        is_stale, why = staleness(path)
        stale += is_stale
        print(f"{'STALE' if is_stale else 'ok':6}{path.name:28}{why}")
    print(f"{stale} of {len(files)} results files stale", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    run_main(main)
