"""`ssl-aug views RECIPE [key=value ...] --out views.png`: an image grid of a batch's augmented views."""

from __future__ import annotations

from ssl_aug.cli._common import add_command


def run(args) -> int:
    from ssl_aug.config import load_recipe
    from ssl_aug.workflows.viewgrid import write_view_grid

    cfg = load_recipe(args.recipe, list(args.overrides))
    out = write_view_grid(cfg, args.out, n=args.images, seed=args.seed)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "views", run, help="draw a grid of a batch's views (see the augmentation before training)")
    p.add_argument("recipe", help="a TOML recipe file or a shipped recipe name")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. augment.color_jitter.p=0")
    p.add_argument("--out", default="views.png", help="PNG file to write (default views.png)")
    p.add_argument("--images", type=int, default=8, help="images (columns) to draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice and the view parameters")
