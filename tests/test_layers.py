"""The package's layout is its architecture (docs/architecture.md): each folder a layer, a
module importing only its own layer or the ones below, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "model_server"
# Lowest first. Top-level modules are the foundation (used by all) or the entry points.
LAYERS = [
    {"constants", "errors", "json_codec", "files", "missing", "processes"},
    {"config"},
    {"models"},
    {"monitoring"},
    {"core"},
    {"rollout"},
    {"transports"},
    {"bentoml_hooks", "local_server", "admin"},
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    unit = module.split(".")[1] if "." in module else module
    return next(i for i, names in enumerate(LAYERS) if unit in names)


def _imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports (any depth)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py") if "oip_proto" not in p.parts}
    found: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("model_server"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("model_server")}
        found[name] = {t for t in targets if t in modules and t != name and t != "model_server"}
    return found


def test_every_module_belongs_to_a_layer() -> None:
    for module in _imports():
        if module != "model_server":
            _layer(module)  # StopIteration names a module outside every layer


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in _imports().items()
        if module != "model_server"
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_there_is_no_import_cycle() -> None:
    graph = _imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
