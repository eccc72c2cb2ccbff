"""Large image folders stream: above a size threshold an image-folder data set is packed once into
tar shards of its original images (in the image-folder cache) instead of decoded squares in memory.

`auto_shards(tree, size, rank)` -> the shard folder to stream, or None when the tree's decoded pack
(images x 3 x size x size bytes) stays under STREAM_ABOVE_BYTES. Only rank 0 packs; other ranks
wait for its finished index. A pack whose recorded source fingerprint matches the tree is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from ssl_aug.data import cache_root
from ssl_aug.errors import SslAugError

STREAM_ABOVE_BYTES = 8 * 2 ** 30  # decoded size above which an image folder streams from shards
WAIT_S = 24 * 3600  # how long other ranks wait for rank 0's pack


def _count_images(tree: Path) -> int:
    from ssl_aug.data.image_sizes import IMAGE_EXTS

    return sum(fn.lower().endswith(IMAGE_EXTS) for _, _, files in os.walk(tree) for fn in files)


def _finished(dst: Path, fingerprint: str) -> bool:
    try:
        return json.loads((dst / "index.json").read_text()).get("source_fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def auto_shards(tree: Path, size: int, rank: int = 0, threshold: int | None = None,
                verbose: bool = True) -> Path | None:
    """See module docstring (threshold default STREAM_ABOVE_BYTES). One line on stderr says which path
    was chosen and why."""
    from ssl_aug.data.imagefolder import display_name, tree_fingerprint
    from ssl_aug.data.shard_pack import pack_shards

    threshold = STREAM_ABOVE_BYTES if threshold is None else threshold
    n = _count_images(tree)
    decoded = n * 3 * size * size
    if decoded <= threshold:
        return None
    key = hashlib.sha1(os.fsencode(str(tree.resolve()))).hexdigest()[:10]
    dst = cache_root() / "imagefolder" / f"{display_name(tree.resolve().name)}-{key}-shards"
    fp = tree_fingerprint(tree, 0)
    if verbose and rank == 0:
        print(f"image folder {display_name(str(tree))}: {n} images would take {decoded / 1e9:.1f} GB decoded at "
              f"{size} px (above {threshold / 1e9:.1f} GB): streaming crops from shards of the original images in "
              f"{display_name(str(dst))}", file=sys.stderr)
    if rank == 0:
        if not _finished(dst, fp):
            # 1000 images per shard, fewer for small trees so that ranks x workers still find shards
            pack_shards(tree, dst, shard_size=max(16, min(1000, n // 64)), fingerprint=fp, verbose=verbose)
        return dst
    deadline = time.monotonic() + WAIT_S
    while not _finished(dst, fp):
        if time.monotonic() > deadline:
            raise SslAugError(f"rank {rank}: no finished shard pack in {dst} after {WAIT_S} s; rank 0 packs it")
        time.sleep(2.0)
    return dst
