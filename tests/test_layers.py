"""The package's shape: imports run downward only, through the layers docs/development.md lists.

    cli, app, middleware, upstream, cache, compress, stats, storage, config, openai, onnx_session, types, errors

A module may import what is listed after its own layer, never before it (the package's __init__ sits above
them all and only re-exports public names). Inside a subpackage modules import each other freely.
"""

from __future__ import annotations

import ast
from pathlib import Path

LAYERS = ["cli", "app", "middleware", "upstream", "cache", "compress", "stats", "storage", "config", "openai",
          "onnx_session", "types", "errors"]
PACKAGE = Path(__file__).resolve().parents[1] / "semproxy"


def _layer(module: str) -> str:
    """`semproxy.cache.store` -> "cache"; `semproxy.app` -> "app"; `semproxy` -> "__init__"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> list[tuple[str, str, str]]:
    """(importing file, its layer, imported module) for every import of semproxy inside the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("semproxy"):
                found.append((str(relative), _layer(module), node.module))
            elif isinstance(node, ast.Import):
                found += [(str(relative), _layer(module), a.name) for a in node.names if a.name.startswith("semproxy")]
    return found


def test_every_module_belongs_to_a_listed_layer() -> None:
    layers = {_layer(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")}
    assert layers - {"__init__", "__main__"} <= set(LAYERS)


def test_imports_run_downward_only() -> None:
    imports = _imports()
    assert len(imports) > 100  # the walk found the package's imports
    upward = [(where, target) for where, layer, target in imports
              if layer in LAYERS and _layer(target) in LAYERS
              and LAYERS.index(_layer(target)) < LAYERS.index(layer)]
    assert upward == []


def test_the_bottom_layers_import_only_what_is_below_them() -> None:
    allowed = {"types": {"errors"}, "openai": {"errors", "types"}, "onnx_session": {"errors"}, "errors": set()}
    for where, layer, target in _imports():
        if layer in allowed and _layer(target) != layer:
            assert _layer(target) in allowed[layer], (where, target)
