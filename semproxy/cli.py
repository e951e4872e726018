"""The `semproxy` command: serve, statistics, and cache maintenance."""

from __future__ import annotations

import argparse
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
    stats.add_argument("--json", action="store_true", help="print the figures as JSON (keys in the README)")
    stats.add_argument("--top", type=int, default=10, help="how many repeated prompts to list (default 10)")
    stats.add_argument("--buckets", type=int, default=24, help="intervals in the hit-rate chart (default 24)")
    stats.add_argument("--hashes", action="store_true", help="show prompt hashes even where text was logged")
    stats.set_defaults(handler=_stats)

    cache = commands.add_parser("cache", help="inspect or clear the cache")
    cache_commands = cache.add_subparsers(required=True, metavar="ACTION")
    clear = cache_commands.add_parser("clear", help="remove cached entries")
    _common(clear)
    clear.add_argument("--namespace", help="only this shared namespace's entries")
    clear.set_defaults(handler=_cache_clear)
    info = cache_commands.add_parser("info", help="count cached entries")
    _common(info)
    info.set_defaults(handler=_cache_info)

    database = commands.add_parser("db", help="the shared PostgreSQL store")
    database_commands = database.add_subparsers(required=True, metavar="ACTION")
    migrate = database_commands.add_parser("migrate", help="create or upgrade semproxy's tables (also done at start)")
    _common(migrate)
    migrate.set_defaults(handler=_db_migrate)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="where the cache lives (default: a per-user directory)")
    parser.add_argument("--config", type=Path, help="a TOML settings file")
    parser.add_argument("--store", help="postgresql://... to share the cache and the request log between "
                        "replicas (default: SQLite + FAISS in the data dir)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("upstream", "host", "port", "data_dir", "store")
    return {name: getattr(args, name, None) for name in names}


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from semproxy.app import build_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    targets = ", ".join(f"{u.name} ({u.url}{', ' + u.region if u.region else ''})"
                        for u in settings.upstreams) or settings.upstream
    if settings.upstreams and args.upstream:
        print("semproxy: --upstream is ignored: [[upstreams]] tables are configured", file=sys.stderr)
    where = _redacted(settings.store) if settings.store else settings.data_dir
    print(f"semproxy: forwarding to {targets}; data in {where}", file=sys.stderr)
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, lifespan="on", timeout_graceful_shutdown=30)
    return 0


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from semproxy.stats import report, terminal

    try:
        figures = report.summarize(settings.stats_location, since_seconds=report.parse_duration(args.since), by=args.by,
                                   top=max(0, args.top), buckets=max(1, min(200, args.buckets)),
                                   show_text=not args.hashes)
    except ConfigError as exc:
        print(f"semproxy: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        terminal.render(figures, Console())
    return 0


def _cache_clear(settings: Settings, args: argparse.Namespace) -> int:
    from semproxy.app import open_store
    from semproxy.cache.keys import tenant_id

    store = open_store(settings)
    try:
        tenant = None if args.namespace is None else tenant_id(api_key=None, namespace=args.namespace,
                                                               salt=store.salt)
        removed = store.clear(tenant=tenant)
    finally:
        store.close()
    where = "" if args.namespace is None else f" from namespace {args.namespace!r}"
    print(f"removed {removed} entries{where}")
    return 0


def _cache_info(settings: Settings, _: argparse.Namespace) -> int:
    from semproxy.app import open_store

    store = open_store(settings)
    try:
        count = store.count()
    finally:
        store.close()
    print(f"{count} entries in {_redacted(settings.store) if settings.store else settings.db_path}")
    return 0


def _db_migrate(settings: Settings, _: argparse.Namespace) -> int:
    if settings.store is None:
        print("semproxy: db migrate needs a postgresql:// store (--store or the `store` setting)", file=sys.stderr)
        return 2
    from semproxy.cache.postgres import migrate

    before, after = migrate(settings.store)
    print(f"schema version {after}" + ("" if before == after else f" (was {before})"))
    return 0


def _redacted(url: str) -> str:
    """A database URL without its password, for messages."""
    import re

    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
