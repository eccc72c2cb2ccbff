"""`ssl-aug list WHAT`: the names a recipe or command can use (methods, ops, presets, backbones, sources,
evaluators, schedules, commands) and the shipped recipes (training recipes, ablations, searches)."""

from __future__ import annotations

from ssl_aug.cli._common import add_command

KINDS = ("methods", "ops", "presets", "backbones", "sources", "evaluators", "schedules", "commands", "recipes")


def _first_line(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


def _registry(kind: str):
    if kind == "methods":
        from ssl_aug.methods import METHODS as reg
    elif kind == "ops":
        from ssl_aug.augment.ops import OPS as reg
    elif kind == "presets":
        from ssl_aug.augment.presets import PRESETS as reg
    elif kind == "backbones":
        from ssl_aug.models import BACKBONES as reg
    elif kind == "sources":
        from ssl_aug.data import SOURCES as reg
    elif kind == "evaluators":
        from ssl_aug.evaluation import EVALUATORS as reg
    elif kind == "schedules":
        from ssl_aug.schedules import SCHEDULES as reg
    else:
        from ssl_aug.cli import COMMANDS as reg
    return reg


def recipe_kinds() -> dict[str, list[tuple[str, str]]]:
    """Shipped recipes by kind -> [(name, description)]: a search spec has a space / strategy / trials /
    objective, an ablation spec cells / axes (or a base and a mode), every other file is a training recipe."""
    from ssl_aug.config import RECIPE_DIR, read_toml

    groups: dict[str, list[tuple[str, str]]] = {"training recipes": [], "ablations": [], "searches": []}
    for path in sorted(RECIPE_DIR.glob("*.toml")):
        data = read_toml(path)
        keys = set(data)
        kind = ("searches" if {"space", "strategy", "trials", "objective"} & keys
                else "ablations" if {"cells", "axes"} & keys or {"base", "mode"} <= keys else "training recipes")
        groups[kind].append((path.stem, str(data.get("description", ""))))
    return groups


def run(args) -> int:
    from ssl_aug.errors import SslAugError
    from ssl_aug.registry import did_you_mean

    if args.what not in KINDS:
        raise SslAugError(f"ssl-aug list {args.what!r} is not allowed;{did_you_mean(args.what, KINDS)} choose one of: "
                          f"{', '.join(KINDS)}")
    if args.what == "recipes":
        for kind, rows in recipe_kinds().items():
            command = {"training recipes": "train", "ablations": "ablate", "searches": "search"}[kind]
            print(f"{kind} (ssl-aug {command} NAME):")
            width = max((len(name) for name, _ in rows), default=0)
            for name, description in rows:
                print(f"  {name:<{width}}  {description}".rstrip())
        return 0
    reg = _registry(args.what)
    width = max((len(name) for name in reg.names()), default=0)
    for name, obj in reg.items():
        if args.what == "commands":
            import importlib

            obj = importlib.import_module(obj)
        print(f"{name:<{width}}  {obj.describe() if args.what == 'sources' else _first_line(obj)}".rstrip())
    return 0


def register(sub) -> None:
    p = add_command(sub, "list", run, help="list methods, ops, presets, backbones, sources, evaluators, schedules, "
                                          "commands or the shipped recipes")
    p.add_argument("what", help=f"what to list: {', '.join(KINDS)}")
