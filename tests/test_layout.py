"""The package layout rules: no source file over 400 lines, no import cycle, imports flow one way.

Flow (module-level imports only; imports inside functions are deliberate late bindings):
base (errors, io, _version, config, device, distributed) -> data -> augment -> models, losses -> methods
-> train -> evaluation -> workflows (experiment, ablation, search, export, gate, launchers, plots)
-> benchmarks, cli.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ssl_aug"
LAYERS = {"errors": 0, "io": 0, "_version": 0, "registry": 0, "schedules": 0, "config": 0, "device": 0, "distributed": 0,
          "data": 1, "augment": 2, "models": 3, "losses": 3, "methods": 4, "train": 5, "optim": 5, "checkpoint": 5,
          "evaluation": 6,
          "experiment": 7, "ablation": 7, "search": 7, "export": 7, "gate": 7, "launchers": 7, "plots": 7,
          "evaluate_encoder": 7, "benchmarks": 8, "cli": 9, "__main__": 9, "__init__": 9}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def top_level_imports(path: Path, name: str) -> set[str]:
    """ssl_aug modules imported at module level (not inside functions or TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ssl_aug")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("ssl_aug"):
                found |= {f"{mod}.{a.name}" for a in node.names}
                if mod != "ssl_aug":  # `from ssl_aug import x` imports ssl_aug.x, not the package's contents
                    found.add(mod)
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1] if len(parts) > 1 else "__init__", 9)


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for _, p in modules()
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"


def test_no_import_cycle():
    names = dict(modules())
    graph = {m: {i for i in top_level_imports(p, m) if i in names and i != m} for m, p in names.items()}

    def parents(m):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = m.split(".")
        return {".".join(parts[:k]) for k in range(2, len(parts))} & set(names)

    for m in graph:
        graph[m] |= {p for i in list(graph[m]) for p in parents(i)} - {m} - parents(m)
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_imports_flow_one_way():
    backwards = []
    for name, path in modules():
        if name == "ssl_aug" or name.endswith("__main__"):
            continue
        for imported in top_level_imports(path, name):
            if layer(imported) > layer(name):
                backwards.append(f"{name} -> {imported}")
    assert not backwards, "imports against the flow: " + ", ".join(sorted(backwards))
