"""The package is layered and acyclic: each module imports only its own layer and those
below it, and no chain of imports (module level or inside functions) returns to its start.

    base (configlib, sharding, errors, paths, fileio, hardware) -> models -> convert -> losses
    -> data (and tasks) -> train -> online -> cli (cli, bench, plot)

Read from the source with `ast`, so a lazy import inside a function counts too.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "alignjax")
LAYERS = ["base", "models", "convert", "losses", "data", "train", "online", "cli"]
TOP_LEVEL = {
    "configlib": "base",
    "sharding": "base",
    "errors": "base",
    "fileio": "base",
    "paths": "base",
    "hardware": "base",
    "quiet": "base",
    "tasks": "data",
    "cli": "cli",
    "bench": "cli",
    "bench_trl": "cli",
    "plot": "cli",
}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                out[_module_name(path)] = path
    return out


def _imports(name: str, path: str, known: set[str]) -> set[str]:
    """The alignjax modules `name` imports (a `from pkg import mod` names the module)."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = (
                    name.split(".")[: -node.level] if not path.endswith("__init__.py") else name.split(".")
                )
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("alignjax") and target != name:
                found.add(target)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # alignjax/__init__.py
    return TOP_LEVEL.get(parts[1], parts[1])


GRAPH = None


def _graph():
    global GRAPH
    if GRAPH is None:
        modules = _modules()
        GRAPH = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    return GRAPH


def test_every_module_has_a_layer():
    unknown = sorted({m for m in _graph() if _layer(m) not in LAYERS})
    assert not unknown, f"modules outside the layer map (add them to TOP_LEVEL or LAYERS): {unknown}"


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{m} ({_layer(m)}) imports {t} ({_layer(t)})"
        for m, targets in sorted(_graph().items())
        for t in sorted(targets)
        if LAYERS.index(_layer(t)) > LAYERS.index(_layer(m))
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            # A package's __init__ importing its own submodules is how it re-exports them.
            if t.startswith(m + "."):
                continue
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    "source, message",
    [
        ("from alignjax.online import sampler\n", "upward"),
        ("import alignjax.cli\n", "upward"),
    ],
)
def test_the_check_sees_an_upward_import(tmp_path, source, message):
    path = tmp_path / "probe.py"
    path.write_text(source)
    targets = _imports("alignjax.models.probe", str(path), set(_graph()) | {"alignjax.models.probe"})
    assert any(LAYERS.index(_layer(t)) > LAYERS.index("models") for t in targets), message
