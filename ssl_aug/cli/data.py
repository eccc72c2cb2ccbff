"""`ssl-aug data pack|info`: pack an image folder into npz shards, inspect a data set."""

from __future__ import annotations

from ssl_aug.cli._common import add_command, passthrough


def info(args) -> int:
    import torch

    from ssl_aug.data import load_dataset

    ds = load_dataset(args.name, split=args.split, root=args.root, download=args.download)
    counts = torch.bincount(ds.labels[ds.labels >= 0], minlength=len(ds.classes)).tolist()
    print(f"{ds.name} [{args.split}]: {len(ds.labels)} images, shape {tuple(ds.images.shape[1:])}, "
          f"{ds.images.dtype}, {len(ds.classes)} classes")
    for name, count in zip(ds.classes, counts):
        print(f"  {name:>16}: {count}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="data tools: pack an image folder, inspect a data set")
    data = p.add_subparsers(dest="data", metavar="ACTION", required=True, parser_class=type(p))
    passthrough(data, "pack", "ssl_aug.data.imagefolder", "pack_main",
                help="decode an image folder once into uint8 npz shards")
    b = add_command(data, "info", info, help="load a data set and print its size and class counts")
    b.add_argument("name")
    b.add_argument("--split", default="train")
    b.add_argument("--root", default=None)
    b.add_argument("--download", action="store_true")
