"""The package is layered and acyclic: each module imports only its own layer and those
below it, and no chain of imports between modules (module level or inside functions, a
package's `__init__` included) returns to its start.

    core -> models -> convert -> losses -> data (and tasks) -> generation -> rewards
    -> online -> train -> evaluation -> commands (and cli)

The online methods' batch sources sit below `train` because the training method registry
names them: every method is registered where the trainer looks methods up, so a config
loads after a plain import. Read from the source with `ast`, so a lazy import inside a
function counts too, and so does `importlib.import_module("alignjax....")`.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "alignjax")
LAYERS = [
    "core", "models", "convert", "losses", "data", "generation", "rewards", "online", "train",
    "evaluation", "commands",
]  # fmt: skip
TOP_LEVEL = {"tasks": "data", "cli": "commands"}


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
        elif _is_import_module_call(node):
            targets = [node.args[0].value]
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


def _is_import_module_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # alignjax/__init__.py
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


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_a_cycle_through_a_package_init():
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p"}, "q": {"p.a"}}
    assert _cycles(graph) == ["p -> p.a -> p.b -> p"]


@pytest.mark.parametrize(
    "source, message",
    [
        ("from alignjax.generation import sampler\n", "upward"),
        ("import alignjax.cli\n", "upward"),
        ("def f():\n    importlib.import_module('alignjax.commands.train')\n", "upward"),
    ],
)
def test_the_check_sees_an_upward_import(tmp_path, source, message):
    path = tmp_path / "probe.py"
    path.write_text(source)
    targets = _imports("alignjax.models.probe", str(path), set(_graph()) | {"alignjax.models.probe"})
    assert any(LAYERS.index(_layer(t)) > LAYERS.index("models") for t in targets), message
