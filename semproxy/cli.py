"""The `semproxy` command: serve, statistics, hit-policy evaluation, and cache maintenance."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semproxy.config import Settings, load_settings
from semproxy.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `semproxy` script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(config_file=args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"semproxy: {exc}", file=sys.stderr)
        return 2
    handler: Any = args.handler
    return int(handler(settings, args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semproxy", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    _common(serve)
    serve.add_argument("--upstream", help="base URL of the OpenAI-compatible API (default: OpenAI)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.set_defaults(handler=_serve)

    stats = commands.add_parser("stats", help="requests, hit rates, savings and latency from the request log")
    _common(stats)
    stats.add_argument("--since", default="24h", help="how far back: 90m, 24h, 7d, ... (default 24h)")
    stats.add_argument("--by", choices=("model", "tenant", "upstream", "endpoint"), help="add a table per group")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON (keys: docs/statistics.md)")
    stats.add_argument("--top", type=int, default=10, help="how many repeated prompts to list (default 10)")
    stats.add_argument("--buckets", type=int, default=24, help="intervals in the hit-rate chart (default 24)")
    stats.add_argument("--hashes", action="store_true", help="show prompt hashes even where text was logged")
    stats.set_defaults(handler=_stats)

    evaluate = commands.add_parser("eval", help="replay labelled prompt pairs through the hit policy")
    _common(evaluate)
    evaluate.add_argument("pairs", type=Path, metavar="PAIRS_FILE",
                          help="jsonl with text_a, text_b, label (1 = same meaning); or a PAWS / STS-B TSV file")
    evaluate.add_argument("--plot", type=Path, metavar="PNG", help="draw the precision/recall curve to this file")
    evaluate.add_argument("--max-false-hit-rate", type=float, help="the budget to mark (default: the configured one)")
    evaluate.add_argument("--limit", type=int, help="read at most this many pairs")
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.set_defaults(handler=_eval)

    cache = commands.add_parser("cache", help="inspect or clear the cache")
    cache_commands = cache.add_subparsers(required=True, metavar="ACTION")
    clear = cache_commands.add_parser("clear", help="remove cached entries")
    _common(clear)
    which = clear.add_mutually_exclusive_group()
    which.add_argument("--namespace", help="only this shared namespace's entries")
    which.add_argument("--tenant", metavar="API_KEY_OR_HASH",
                       help="erase one tenant: its entries and its request-log rows (an API key, or its hash; "
                       "'-' reads it from standard input, out of the shell's history and the process list)")
    clear.set_defaults(handler=_cache_clear)
    info = cache_commands.add_parser("info", help="count cached entries")
    _common(info)
    info.set_defaults(handler=_cache_info)
    check = cache_commands.add_parser("check", help="verify the data dir: SQLite integrity, whole entries, index")
    _common(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=_cache_check)

    database = commands.add_parser("db", help="the shared PostgreSQL store")
    database_commands = database.add_subparsers(required=True, metavar="ACTION")
    migrate = database_commands.add_parser("migrate", help="create or upgrade semproxy's tables (also done at start)")
    _common(migrate)
    migrate.set_defaults(handler=_db_migrate)

    admin_token = commands.add_parser("admin-token", help="print the admin endpoints' token (made if there is none)")
    _common(admin_token)
    admin_token.set_defaults(handler=_admin_token)
    hash_key = commands.add_parser("hash-key", help="print a client key's hash for client_keys (the key is read "
                                   "from standard input, so it stays out of the shell's history)")
    hash_key.set_defaults(handler=_hash_key, data_dir=None, config=None, store=None)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="where the cache lives (default: a per-user directory)")
    parser.add_argument("--config", type=Path, help="a TOML settings file")
    parser.add_argument("--store", help="postgresql://... to share the cache and the request log between "
                        "replicas (default: SQLite + FAISS in the data dir)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("upstream", "host", "port", "data_dir", "max_false_hit_rate", "store")
    return {name: getattr(args, name, None) for name in names}


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from semproxy.app import build_app

    _cap_malloc_arenas()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    targets = ", ".join(f"{u.name} ({u.url}{', ' + u.region if u.region else ''})"
                        for u in settings.upstreams) or settings.upstream
    if settings.upstreams and args.upstream:
        print("semproxy: --upstream is ignored: [[upstreams]] tables are configured", file=sys.stderr)
    where = _redacted(settings.store) if settings.store else settings.data_dir
    print(f"semproxy: forwarding to {targets}; data in {where}", file=sys.stderr)
    # Idle client connections stay open 75 s (uvicorn's default is 5 s, the very expiry of httpx's pool, which
    # the OpenAI SDKs use: a client reusing a connection as the server closes it gets a connection error).
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, lifespan="on", timeout_graceful_shutdown=30, timeout_keep_alive=75)
    return 0


def _cap_malloc_arenas() -> bool:
    """glibc gives threads that allocate at once malloc arenas of their own, up to eight per core, and memory
    freed in one arena stays with it: a server's resident memory creeps as its worker threads share the work
    out differently (the 30-minute soak rose 0.6 MB a minute). Two arenas are plenty here: the heavy work runs
    in ONNX Runtime, FAISS and SQLite. MALLOC_ARENA_MAX in the environment wins; elsewhere nothing changes."""
    import contextlib
    import ctypes
    import os

    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no arenas to cap)
        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, 2))  # M_ARENA_MAX, before any thread of ours allocates
    return False


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from semproxy.app import build_storage
    from semproxy.stats import report, terminal

    storage = build_storage(settings)
    try:
        figures = report.summarize(storage, since_seconds=report.parse_duration(args.since), by=args.by,
                                   top=max(0, args.top), buckets=max(1, min(200, args.buckets)),
                                   show_text=not args.hashes)
    except ConfigError as exc:
        print(f"semproxy: {exc}", file=sys.stderr)
        return 2
    finally:
        storage.close()
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        terminal.render(figures, Console())
    return 0


def _eval(settings: Settings, args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from semproxy.app import configured_spaces, load_verifier
    from semproxy.cache import evaluation

    try:
        pairs = evaluation.read_pairs(args.pairs, limit=args.limit)
    except ConfigError as exc:
        print(f"semproxy: {exc}", file=sys.stderr)
        return 2
    spaces = configured_spaces(settings)
    verifiers = {m: load_verifier(m, max_false_hit_rate=settings.max_false_hit_rate) if settings.verify_hits else None
                 for m in spaces.embedders}
    labels = np.asarray([p.same_meaning for p in pairs], dtype=np.bool_)
    routed = evaluation.routed_scores(pairs, spaces, verifiers, floor=settings.similarity_threshold)
    cosines, scores = routed.cosines, routed.scores
    if settings.verify_hits:
        points = evaluation.budget_sweep(routed, labels, verifiers, [*evaluation.BUDGETS, settings.max_false_hit_rate])
        configured = points[sorted(set([*evaluation.BUDGETS, settings.max_false_hit_rate])).index(
            settings.max_false_hit_rate)]
    else:
        configured = evaluation.operating_point("cosine only", scores > evaluation.REJECTED, labels,
                                                settings.similarity_threshold)
        points = [configured]
    baseline = evaluation.operating_point(f"cosine >= {settings.similarity_threshold:g} alone",
                                          cosines >= settings.similarity_threshold, labels,
                                          settings.similarity_threshold)
    if args.json:
        print(json.dumps({"pairs": len(pairs), "same_meaning": int(labels.sum()),
                          "configured": dataclasses.asdict(configured),
                          "sweep": [dataclasses.asdict(p) for p in points],
                          "cosine_alone": dataclasses.asdict(baseline)}, indent=2))
    else:
        _print_points(len(pairs), int(labels.sum()), points, configured, baseline)
    if args.plot is not None:
        try:
            evaluation.plot(args.plot, evaluation.precision_recall_curve(scores, labels), configured,
                            evaluation.precision_recall_curve(cosines, labels), title=args.pairs.name)
        except ConfigError as exc:
            print(f"semproxy: {exc}", file=sys.stderr)
            return 2
        print(f"plot written to {args.plot}")
    return 0


def _print_points(count: int, positives: int, points: Any, configured: Any, baseline: Any) -> None:
    print(f"{count} pairs, {positives} with the same meaning; stored = first text, asked = second")
    print(f"{'policy':28s} {'threshold':>9s} {'served':>7s} {'precision':>9s} {'recall':>7s} "
          f"{'false hits':>10s} {'hit rate':>8s}")
    for point in [*points, baseline]:
        mark = "  <- configured" if point is configured else ""
        print(f"{point.label:28s} {point.threshold:9.4f} {point.served:7d} {point.precision:9.1%} "
              f"{point.recall:7.1%} {point.false_hit_rate:10.2%} {point.hit_rate:8.1%}{mark}")


def _cache_clear(settings: Settings, args: argparse.Namespace) -> int:
    from semproxy.app import build_storage
    from semproxy.cache.keys import tenant_id
    from semproxy.cache.maintenance import tenant_hashes

    storage = build_storage(settings)
    try:
        storage.open()
        salt = storage.tenant_salt()
        if args.tenant is not None:
            who = _secret("API key or tenant hash: ") if args.tenant == "-" else args.tenant
            if not who.strip():
                print("semproxy: no tenant given", file=sys.stderr)
                return 2
            entries, rows = storage.erase_tenants(tenant_hashes(who.strip(), salt))
            print(f"removed {entries} entries and {rows} request-log rows of the tenant")
            return 0
        tenants = None if args.namespace is None else {tenant_id(api_key=None, namespace=args.namespace, salt=salt)}
        removed = storage.clear_entries(tenants=tenants)
    finally:
        storage.close()
    where = "" if args.namespace is None else f" from namespace {args.namespace!r}"
    print(f"removed {removed} entries{where}")
    return 0


def _secret(prompt: str) -> str:
    """A key from the terminal without echo, or the first line of standard input."""
    import getpass

    return getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.readline()


def _cache_check(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from semproxy.cache.maintenance import check
    from semproxy.storage.sqlite import SqliteStorage

    if settings.store is not None:
        print("semproxy: cache check verifies the embedded data dir; PostgreSQL checks its own tables",
              file=sys.stderr)
        return 2
    report = check(SqliteStorage(settings.data_dir), large_scope_entries=settings.large_scope_entries)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2))
    else:
        print(f"{report.entries} entries, {report.exact_keys} exact keys, {report.vectors} vectors, "
              f"{report.indexed} indexed, {report.searched} found again by search")
        for name, verdict in report.files.items():
            print(f"{name}: integrity {verdict}")
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        print("ok" if report.ok else f"{len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def _cache_info(settings: Settings, _: argparse.Namespace) -> int:
    from semproxy.app import build_storage

    storage = build_storage(settings)
    try:
        count, spaces = storage.count_entries(), storage.count_by_space()
    finally:
        storage.close()
    print(f"{count} entries in {_redacted(settings.store) if settings.store else settings.db_path}")
    names = {None: "waiting to be embedded", "": "exact hits only"}
    for space, n in sorted(spaces.items(), key=lambda item: (item[0] is None, item[0] or "")):
        print(f"  {names.get(space, space)}: {n}")
    return 0


def _db_migrate(settings: Settings, _: argparse.Namespace) -> int:
    if settings.store is None:
        print("semproxy: db migrate needs a postgresql:// store (--store or the `store` setting)", file=sys.stderr)
        return 2
    from semproxy.storage.postgres_schema import migrate

    before, after = migrate(settings.store)
    print(f"schema version {after}" + ("" if before == after else f" (was {before})"))
    return 0


def _admin_token(settings: Settings, _: argparse.Namespace) -> int:
    from semproxy.stats.admin_token import ensure_admin_token

    if settings.admin_open:
        print("semproxy: admin_open is set: the admin endpoints need no token", file=sys.stderr)
        return 1
    print(settings.admin_token or ensure_admin_token(settings.data_dir))
    return 0


def _hash_key(_: Settings, __: argparse.Namespace) -> int:
    from semproxy.middleware.access import key_hash

    key = _secret("client key: ").strip()
    if not key:
        print("semproxy: no key given", file=sys.stderr)
        return 2
    print(key_hash(key))
    return 0


def _redacted(url: str) -> str:
    """A database URL without its password, for messages."""
    import re

    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
