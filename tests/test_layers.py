"""The package's layers, read from the source: no import circle, and no module importing a layer above its own.

Layers, bottom to top (docs/architecture.md draws them):
  0 errors
  1 config                                  (YAML and the schemas; no FL library)
  2 sparsity, comm, models, data            (tensors, wire formats, networks, data sets)
  3 training, aggregation, supermask, plain_state, schedule   (maths over those; the paired client schedule)
  4 strategies                              (both halves of every algorithm)
  5 runs                                    (what a run writes and reads back: results, checkpoints, reports)
  6 runtime, imp                            (Flower apps, simulation, Ray; the centralized IMP runner)
  7 cli, flower                             (the command line; the apps for your own Flower project)
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {
    "fedlottery.errors": 0,
    "fedlottery.config": 1,
    "fedlottery.sparsity": 2, "fedlottery.comm": 2, "fedlottery.models": 2, "fedlottery.data": 2,
    "fedlottery.training": 3, "fedlottery.aggregation": 3, "fedlottery.supermask": 3, "fedlottery.plain_state": 3,
    "fedlottery.schedule": 3,
    "strategies": 4,
    "fedlottery.runs": 5,
    "fedlottery.runtime": 6, "fedlottery.imp": 6,
    "fedlottery.cli": 7, "fedlottery.flower": 7,
}
FL_LIBRARIES = ("flwr", "flwr_datasets", "ray")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("fedlottery", "strategies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that `module` imports (at the top or inside a function)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out.update(n for n in names if n in known and n != module)
    return out


def _external(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            tops.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
    return tops


def layer_of(module: str) -> int:
    best = max((prefix for prefix in LAYER if module == prefix or module.startswith(prefix + ".")), key=len,
               default=None)
    assert best is not None, f"{module} belongs to no layer: add it to LAYER (and docs/architecture.md)"
    return LAYER[best]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def test_every_module_belongs_to_a_layer():
    for module in _modules():
        if module not in ("fedlottery",):
            layer_of(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m, deps in _graph().items() if m != "fedlottery" for d in sorted(deps)
              if d != "fedlottery" and layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circle_between_modules():
    graph = _graph()
    # A package's __init__ re-exporting its own modules is not a circle: drop package -> own-submodule edges.
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_config_package_imports_no_fl_library():
    for module, path in _modules().items():
        if module != "fedlottery" and layer_of(module) <= 1:
            assert not _external(path) & set(FL_LIBRARIES), f"{module} imports {_external(path) & set(FL_LIBRARIES)}"


def test_the_layer_test_sees_a_violation():
    """The checker itself: an upward import written into a throw-away module is found."""
    source = "from fedlottery.runtime import server_app\n"
    tree_imports = _imports("fedlottery.sparsity.fake", _FakePath(source), {"fedlottery.runtime.server_app",
                                                                            "fedlottery.runtime"})
    assert tree_imports == {"fedlottery.runtime.server_app", "fedlottery.runtime"}
    assert layer_of("fedlottery.runtime.server_app") > layer_of("fedlottery.sparsity.fake")


class _FakePath:
    name = "fake.py"

    def __init__(self, text: str):
        self.text = text

    def read_text(self) -> str:
        return self.text
