"""The package layout rules: no source file over 400 lines, no import cycle, imports flow one way.

Flow (module-level imports only; imports inside functions are deliberate late bindings):
ground (errors, io, _version, registry, schedules, config, device, distributed) -> data -> augment
-> models, losses -> methods -> train (+ optim, checkpoint) -> evaluation -> export, workflows -> benchmarks, cli.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ssl_aug"
LAYERS = {"errors": 0, "io": 0, "_version": 0, "registry": 0, "schedules": 0, "config": 0, "recipe_checks": 0, "runlock": 0, "device": 0, "distributed": 0,
          "data": 1, "augment": 2, "models": 3, "losses": 3, "methods": 4, "train": 5, "optim": 5, "checkpoint": 5,
          "evaluation": 6, "export": 7, "workflows": 7, "benchmarks": 8, "cli": 9, "__main__": 9, "__init__": 9}
# the package root holds ground helpers only; everything else lives in a package of its layer
ROOT_MODULES = {"__init__", "__main__", "_version", "errors", "io", "registry", "config", "recipe_checks", "runlock",
                "device", "distributed", "optim", "checkpoint"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def top_level_imports(path: Path, name: str, everywhere: bool = False) -> set[str]:
    """ssl_aug modules imported at module level (not inside functions or TYPE_CHECKING blocks); with
    everywhere=True also those imported inside functions."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in (ast.walk(tree) if everywhere else tree.body):
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


def test_package_root_holds_ground_helpers_only():
    modules_at_root = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules_at_root <= ROOT_MODULES, f"not ground helpers: {sorted(modules_at_root - ROOT_MODULES)}"


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
    """No import runs back up the flow: neither at module level nor late, inside a function."""
    backwards = []
    for name, path in modules():
        if name == "ssl_aug" or name.endswith("__main__"):
            continue
        for imported in top_level_imports(path, name, everywhere=True):
            if layer(imported) > layer(name):
                backwards.append(f"{name} -> {imported}")
    assert not backwards, "imports against the flow: " + ", ".join(sorted(backwards))


def test_command_lines_are_parsed_in_cli_only():
    """argparse and argument Namespaces stay in cli/ (and the benchmarks' own `main(argv)`); the library below
    takes plain values. errors.py only builds the one-line parser the commands use."""
    found = []
    for name, path in modules():
        parts = name.split(".")
        if len(parts) > 1 and parts[1] in ("cli", "benchmarks", "errors", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    found.append(f"{name} imports argparse")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # a Namespace: args.option read
                if any(a.arg == "args" for a in node.args.args + node.args.kwonlyargs):
                    read = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                            and isinstance(n.value, ast.Name) and n.value.id == "args"}
                    if read - {"get", "items", "keys", "values", "copy", "update", "pop", "index", "count"}:
                        found.append(f"{name}.{node.name}(args) reads args.{sorted(read)[0]}")
    assert not found, "command-line parsing outside cli/: " + ", ".join(found)
