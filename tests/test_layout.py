"""The package's import structure: no import cycle between rgpo_fast modules (lazy imports
inside functions included, which hide cycles from Python but not from a reader), and the
building blocks never import the trainer or the integrations above them."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rgpo_fast"
# Packages that the trainer and the integrations are built from: they import neither.
LOWER = ("rgpo_fast.algos", "rgpo_fast.ops", "rgpo_fast.rollout", "rgpo_fast.data",
         "rgpo_fast.rewards", "rgpo_fast.kernels")  # fmt: skip
UPPER = ("rgpo_fast.trainer", "rgpo_fast.integrations", "rgpo_fast.train")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """rgpo_fast modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for n in names:
            while n and n not in modules:  # `from pkg import name`: the module, else pkg
                n = n.rpartition(".")[0]
            if n.startswith("rgpo_fast"):
                found.add(n)
    return found


def _graph():
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _package_edges_removed(graph):
    """A package __init__ re-exporting its modules is not a cycle with them."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_no_import_cycle():
    assert _cycles(_package_edges_removed(_graph())) == []


def test_the_cycle_check_sees_a_lazy_import():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]


def test_building_blocks_do_not_import_the_trainer():
    bad = [(m, d) for m, deps in _graph().items() if m.startswith(LOWER)
           for d in deps if d.startswith(UPPER)]  # fmt: skip
    assert bad == []
