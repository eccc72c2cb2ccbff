"""`ssl-aug show RECIPE [key=value ...]`: print the resolved recipe as TOML (what `ssl-aug train` runs)."""

from __future__ import annotations

from ssl_aug.cli._common import add_command


def run(args) -> int:
    from ssl_aug.workflows.ablation.spec import is_ablation_spec
    from ssl_aug.config import apply_overrides
    from ssl_aug.train.recipe_toml import dumps
    from ssl_aug.train.run_folder import read_recipe_source

    data, _ = read_recipe_source(args.recipe)
    if is_ablation_spec(data) or isinstance(data.get("base"), str):  # ablation / search spec: its own keys
        print(dumps(apply_overrides(data, args.overrides)), end="")
        return 0
    from ssl_aug.cli.train import resolved_config

    print(dumps(resolved_config(args.recipe, args.overrides).to_dict()), end="")
    return 0


def register(sub) -> None:
    p = add_command(sub, "show", run, help="print a recipe resolved (defaults and overrides filled in) as TOML",
                    description="Print the resolved recipe as TOML: every key with its value after defaults and "
                                "overrides, paths made absolute. The output is a recipe `ssl-aug train` accepts.")
    p.add_argument("recipe", help="a shipped recipe name, a TOML file or a run folder")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5")
