"""The image-folder cache (decoded packs under `cache_root()/imagefolder/`): list and clear it.

`list_caches() -> [CacheEntry]`; `clear_caches(names=None) -> [CacheEntry]` removes the named packs
(all when None). Only folders that hold a pack written by ssl_aug (meta.json or pack_report.json)
are touched; anything else under the cache root is left alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ssl_aug.data import cache_root
from ssl_aug.errors import SslAugError

__all__ = ["CacheEntry", "list_caches", "clear_caches", "cache_folder"]


@dataclass
class CacheEntry:
    name: str
    path: Path
    source: str
    size: int | None  # image side in px
    images: int | None
    bytes: int


def cache_folder() -> Path:
    """Where image-folder packs live: $SSL_AUG_CACHE (or ~/.cache/ssl_aug) / imagefolder."""
    return cache_root() / "imagefolder"


def _entry(folder: Path) -> CacheEntry | None:
    meta_file, report = folder / "meta.json", folder / "pack_report.json"
    if not (meta_file.is_file() or report.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else json.loads(report.read_text())
    except (OSError, ValueError):
        meta = {}
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return CacheEntry(folder.name, folder, str(meta.get("source") or meta.get("src") or "?"),
                      meta.get("size"), meta.get("images"), size)


def list_caches() -> list[CacheEntry]:
    """Every ssl_aug pack in the cache folder, by name."""
    root = cache_folder()
    if root.exists() and not root.is_dir():
        raise SslAugError(f"image-folder cache {root} is a file, not a folder; fix $SSL_AUG_CACHE")
    if not root.is_dir():
        return []
    return [e for e in (_entry(p) for p in sorted(root.iterdir()) if p.is_dir()) if e is not None]


def clear_caches(names: list[str] | None = None) -> list[CacheEntry]:
    """Remove the named packs (all when `names` is None or empty); -> the entries removed."""
    entries = list_caches()
    if names:
        known = {e.name: e for e in entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SslAugError(f"no cached pack named {unknown[0]!r} in {cache_folder()}; cached: "
                              f"{', '.join(known) or 'none'}")
        entries = [known[n] for n in names]
    for entry in entries:
        shutil.rmtree(entry.path)
    return entries
