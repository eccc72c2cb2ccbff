"""`ssl-aug data pack|info|cache`: pack an image folder into npz shards, inspect a data set, list or
clear the image-folder cache."""

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


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cache_list(args) -> int:
    from ssl_aug.data.cache import cache_folder, list_caches

    entries = list_caches()
    print(f"image-folder cache {cache_folder()}: {len(entries)} pack(s), "
          f"{_megabytes(sum(e.bytes for e in entries))}")
    for e in entries:
        print(f"  {e.name}: {e.images if e.images is not None else '?'} images at {e.size or '?'} px, "
              f"{_megabytes(e.bytes)}, from {e.source}")
    return 0


def cache_clear(args) -> int:
    from ssl_aug.data.cache import cache_folder, clear_caches

    removed = clear_caches(args.names)
    for e in removed:
        print(f"removed {e.path} ({_megabytes(e.bytes)})")
    print(f"cleared {len(removed)} pack(s), {_megabytes(sum(e.bytes for e in removed))} from {cache_folder()}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="data tools: pack an image folder, inspect a data set")
    data = p.add_subparsers(dest="data", metavar="ACTION", required=True, parser_class=type(p))
    passthrough(data, "pack", "ssl_aug.data.pack_command", "pack_main",
                help="decode an image folder once into uint8 npz shards")
    passthrough(data, "gate", "ssl_aug.cli.gate", "gate_main", help="keep the extra images a classifier on real data trusts")
    b = add_command(data, "info", info, help="load a data set and print its size and class counts")
    b.add_argument("name")
    b.add_argument("--split", default="train")
    b.add_argument("--root", default=None)
    b.add_argument("--download", action="store_true")
    p = data.add_parser("cache", help="list or clear decoded image-folder packs ($SSL_AUG_CACHE/imagefolder)")
    cache = p.add_subparsers(dest="cache", metavar="ACTION", required=True, parser_class=type(p))
    add_command(cache, "list", cache_list, help="list the cached packs, their size and source")
    b = add_command(cache, "clear", cache_clear, help="remove cached packs (all, or the NAMEs given)")
    b.add_argument("names", nargs="*", metavar="NAME", help="packs to remove (default: all)")
