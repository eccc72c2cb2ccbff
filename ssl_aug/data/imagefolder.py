"""Class-per-folder image trees -> decoded once, in parallel, into uint8 npz shards.

`pack_imagefolder(src, dst, size)` walks SRC/<class>/**/<image>, decodes JPEG/PNG/WebP/BMP with
PIL in a thread pool (PIL releases the GIL while decoding and resizing), converts to RGB,
resizes the shorter side to `size` (bilinear, antialiased, torchvision's `Resize(size)` rule) and
center-crops `size` x `size` (torchvision's `CenterCrop` rounding), and writes shard_00000.npz, ...
(x (n, size, size, 3) uint8, y (n,) int64) plus classes.txt, files.txt, meta.json and pack_report.json,
the images in one seeded (seed 0) shuffle of the whole tree, so every shard mixes all classes.

Conversions: CMYK, palette, grayscale, 1-bit -> RGB; alpha (RGBA, LA, palette or RGB/L with a
transparent colour) composited over white; 16-bit / 32-bit integer grayscale scaled to 8 bits
(not clipped); EXIF orientation applied; JPEGs decoded at a reduced DCT scale when much larger
than `size` (PIL draft). Smaller images are upscaled and counted (skipped under `min_size` px: too_small).
Skipped, counted and listed (never a traceback, never a label from a wrong folder): 0-byte files,
corrupt or truncated images, unreadable files, dangling or looping symlinks, files that change while
they are read, files without an image extension, files outside class folders; class folders without
any image file are dropped before labels are assigned. File and folder names
that are not valid UTF-8 are kept (decoded from their bytes), counted, and shown with U+FFFD.
A source with split folders (train/, val/, test/, ...) is packed split by split into DST/<split>/.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ssl_aug.data import ImageDataset, cache_root
from ssl_aug.data.image_sizes import IMAGE_EXTS, sample_image_sizes
from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_write

SPLIT_DIRS = ("train", "val", "valid", "validation", "test")
_16BIT = ("I;16", "I;16B", "I;16L", "I;16N")
MAX_SIZE = 4096  # packed side in pixels (the largest crop a recipe allows)


@dataclass
class PackReport:
    """What pack_imagefolder did. skipped: reason -> list of "path: message" (paths relative to src)."""

    src: str
    dst: str
    size: int
    classes: list[str]
    counts: list[int]
    images: int = 0
    shards: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)
    classes_without_images: list[str] = field(default_factory=list)
    upscaled: int = 0
    converted: dict[str, int] = field(default_factory=dict)
    non_utf8_names: int = 0
    seconds: float = 0.0

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self, max_list: int = 20) -> str:
        """Human-readable report, one fact per line."""
        lines = [f"packed {self.images} images of {len(self.classes)} classes at {self.size}x{self.size} "
                 f"into {self.shards} shard(s) in {self.dst} ({self.seconds:.1f} s)"]
        if self.converted:
            modes = ", ".join(f"{k} {v}" for k, v in sorted(self.converted.items()))
            lines.append(f"converted to RGB: {modes}")
        if self.upscaled:
            lines.append(f"upscaled (shorter side < {self.size}): {self.upscaled}")
        if self.non_utf8_names:
            lines.append(f"names not valid UTF-8 (kept, shown with U+FFFD): {self.non_utf8_names}")
        if self.empty_classes:
            lines.append(f"empty class folders skipped: {len(self.empty_classes)} ({', '.join(self.empty_classes)})")
        if self.classes_without_images:
            lines.append("classes kept with 0 decodable images: " + ", ".join(self.classes_without_images))
        lines.append(f"skipped files: {self.num_skipped}" + ("" if not self.skipped else " (" + ", ".join(
            f"{k} {len(v)}" for k, v in sorted(self.skipped.items())) + ")"))
        for reason, items in sorted(self.skipped.items()):
            lines += [f"  {reason}: {item}" for item in items[:max_list]]
            if len(items) > max_list:
                lines.append(f"  {reason}: ... {len(items) - max_list} more in pack_report.json")
        return "\n".join(lines)


def display_name(name: str) -> str:
    """A file-system name as printable UTF-8: undecodable bytes (surrogate escapes) become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def require_folder(path: Path, what: str) -> None:
    """One-line error when `path`, or the nearest existing folder above it, is not a folder."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == path else f" (its parent {display_name(str(probe))} is a file)"
        raise SslAugError(f"{what} {display_name(str(path))} cannot be a folder{where}: "
                          f"{display_name(str(probe))} is a file; give a folder path")


def resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision Resize(size) rule: shorter side -> size, longer side int(size * long / short)."""
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def to_rgb(im):
    """Any PIL mode -> RGB image (see module docstring for the rules)."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _16BIT or mode == "I":
        a = np.asarray(im).astype(np.int64)
        if mode in _16BIT or a.max(initial=0) > 255:
            a = (a.clip(0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(a.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0.0) <= 1.0 else a
        return Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def resize_center_crop(im, size: int):
    """RGB PIL image -> size x size: shorter side to size (bilinear, antialiased), center crop."""
    from PIL import Image

    w, h = im.size
    nw, nh = resized_size(w, h, size)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def decode_image(path: str, size: int, min_size: int = 0):
    """Decode one file -> (array (size, size, 3) uint8 | None, reason, detail).

    reason: "ok" (detail = (source mode, upscaled)), else a skip reason with a one-line message."""
    from PIL import Image, ImageOps

    try:
        before = os.stat(path)
    except OSError as e:  # a dangling or looping symlink, a file removed meanwhile, no permission
        return None, "broken_link" if os.path.islink(path) else "unreadable", f"{type(e).__name__}: {e.strerror}"
    try:
        if before.st_size == 0:
            return None, "empty_file", "0 bytes"
        with Image.open(path) as im:
            if min(im.size) < min_size:
                return None, "too_small", f"{im.size[0]}x{im.size[1]} px, under data.options.min_size = {min_size}"
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # DCT-domain downscale, keeps both sides >= size
            im.load()
            src_mode = im.mode
            up = min(im.size) < size
            ImageOps.exif_transpose(im, in_place=True)  # rotate per EXIF orientation (no copy when absent)
            out = np.asarray(resize_center_crop(to_rgb(im), size), dtype=np.uint8)
        if out.shape != (size, size, 3):
            return None, "corrupt", f"decoded to shape {out.shape}"
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            return None, "changed_while_packing", "the file changed while it was read; pack again to include it"
        return out, "ok", (src_mode, up)
    except Exception as e:  # any decoder failure is a skipped file, never a traceback
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        unreadable = isinstance(e, (PermissionError, FileNotFoundError))
        return None, "unreadable" if unreadable else "truncated" if "truncated" in msg.lower() else "corrupt", msg


def _bad_names(relpath: str) -> int:
    return int(display_name(relpath) != relpath)


def scan_tree(src: Path):
    """-> (classes, files [(path, label)], empty_classes, stray [(relpath, reason)], names not valid
    UTF-8), all sorted. Class names are shown with U+FFFD for undecodable bytes."""
    if src.exists() and not src.is_dir():
        raise SslAugError(f"image folder {display_name(str(src))} is a file; pass a folder with one sub-folder "
                          "per class")
    if not src.is_dir():
        raise SslAugError(f"image folder {display_name(str(src))} does not exist; pass a folder with one "
                          "sub-folder per class")
    classes, files, empty, stray, bad = [], [], [], [], 0
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if not entry.is_dir():
            stray.append((entry.name, "not_in_class_folder"))
            continue
        images = []
        for dirpath, _, filenames in os.walk(entry.path):
            for fn in filenames:
                p = os.path.join(dirpath, fn)
                if fn.lower().endswith(IMAGE_EXTS):
                    images.append(p)
                    bad += _bad_names(fn)
                else:
                    stray.append((display_name(os.path.relpath(p, src)), "not_image"))
        images.sort()  # by path: the order of images inside a class (and of the shards) is deterministic
        if not images:
            empty.append(display_name(entry.name))
            continue
        files.extend((p, len(classes)) for p in images)
        bad += _bad_names(entry.name)
        classes.append(display_name(entry.name))
    if not classes:
        raise SslAugError(f"no class folders with images ({', '.join(IMAGE_EXTS)}) in {display_name(str(src))}; "
                          "expected SRC/<class>/<image>")
    stray.sort()
    return classes, files, empty, stray, bad


def tree_fingerprint(src: Path, size: int, min_size: int = 0) -> str:
    """sha1 over (relative path, byte size, mtime or the stat error of a dangling/looping link) of every file
    and the target size (and min_size)."""
    h = hashlib.sha1((f"size={size}" + (f",min_size={min_size}" if min_size else "")).encode())
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            try:
                st = os.stat(p)
            except OSError as e:
                st = f"error {e.errno}"
            stamp = f"|{st.st_size}|{st.st_mtime_ns}\n" if isinstance(st, os.stat_result) else f"|{st}\n"
            h.update(os.fsencode(os.path.relpath(p, src)) + stamp.encode())
    return h.hexdigest()


def pack_imagefolder(src, dst, size: int = 96, workers: int | None = None, shard_size: int = 10000,
                     verbose: bool = True, fingerprint: str | None = None, min_size: int = 0) -> PackReport:
    """Decode the class tree `src` once into `dst` (see module docstring) -> PackReport.

    verbose: tqdm progress bar and the printed report. The report is also dst/pack_report.json."""
    from tqdm import tqdm

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise SslAugError(f"--size must be an integer from 1 to {MAX_SIZE}, got {size!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise SslAugError(f"--shard-size must be a positive integer, got {shard_size!r}")
    if (workers := workers or os.cpu_count() or 1) < 1:
        raise SslAugError(f"--workers must be >= 1, got {workers!r}")
    if dst.resolve().is_relative_to(src.resolve()):
        raise SslAugError(f"destination {dst} is inside the source tree {src}; choose a folder outside it")
    require_folder(dst, "pack destination")
    t0 = time.perf_counter()
    classes, files, empty, stray, bad = scan_tree(src)
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]  # every shard mixes classes
    fingerprint = fingerprint or tree_fingerprint(src, size, min_size)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SslAugError(f"could not create {display_name(str(dst))}: {exc.strerror or exc}") from None
    for old in list(dst.glob("shard_*.npz")) + [dst / "meta.json"]:
        old.unlink(missing_ok=True)
    rep = PackReport(display_name(str(src)), display_name(str(dst)), size, classes, [0] * len(classes),
                     empty_classes=empty, non_utf8_names=bad)
    for rel, reason in stray:
        rep.skipped.setdefault(reason, []).append(rel)
    buf = np.empty((min(shard_size, len(files)), size, size, 3), dtype=np.uint8)
    labels: list[int] = []
    shard_names: list[str] = []
    kept: list[str] = []  # relative path of every packed image, in shard order (files.txt: groups CSVs)

    def flush():
        name = f"shard_{len(shard_names):05d}.npz"
        x, y = buf[:len(labels)], np.asarray(labels, dtype=np.int64)
        atomic_write(dst / name, lambda f: np.savez(f, x=x, y=y))
        shard_names.append(name)
        labels.clear()

    chunk = max(256, 64 * workers)
    bar = tqdm(total=len(files), unit="img", desc=f"pack {src.name}", disable=not verbose, file=sys.stderr)
    with ThreadPoolExecutor(workers) as pool:
        for lo in range(0, len(files), chunk):
            part = files[lo:lo + chunk]
            for (path, label), (arr, reason, detail) in zip(part, pool.map(decode_image, [p for p, _ in part],
                                                                           [size] * len(part), [min_size] * len(part))):
                if arr is None:
                    rep.skipped.setdefault(reason, []).append(f"{display_name(os.path.relpath(path, src))}: {detail}")
                    continue
                mode, up = detail
                if mode != "RGB":
                    rep.converted[mode] = rep.converted.get(mode, 0) + 1
                rep.upscaled += up
                buf[len(labels)] = arr
                labels.append(label)
                kept.append(os.path.relpath(path, src).replace(os.sep, "/"))
                rep.counts[label] += 1
                if len(labels) == len(buf):
                    flush()
            bar.update(len(part))
    bar.close()
    if labels:
        flush()
    rep.images, rep.shards = sum(rep.counts), len(shard_names)
    rep.classes_without_images = [c for c, n in zip(classes, rep.counts) if n == 0]
    rep.seconds = time.perf_counter() - t0
    atomic_write(dst / "pack_report.json", lambda f: f.write(json.dumps(asdict(rep), indent=1).encode()))
    if rep.images == 0:
        raise SslAugError(f"no decodable images in {src} ({rep.num_skipped} files skipped); "
                          f"see {dst / 'pack_report.json'}")
    atomic_write(dst / "classes.txt", lambda f: f.write("".join(c + "\n" for c in classes).encode()))
    atomic_write(dst / "files.txt", lambda f: f.write("".join(k + "\n" for k in kept).encode("utf-8", "surrogateescape")))
    meta = {"format": "ssl_aug.imagefolder", "version": 1, "size": size, "classes": classes,
            "counts": rep.counts, "images": rep.images, "shards": shard_names, "fingerprint": fingerprint,
            "source": display_name(str(src))}
    atomic_write(dst / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))  # written last
    if verbose:
        print(rep.summary(), file=sys.stderr)
    return rep


def read_packed(dst: Path) -> dict | None:
    """meta.json of a completed pack in dst, or None."""
    try:
        meta = json.loads((dst / "meta.json").read_text())
        return meta if isinstance(meta, dict) and meta.get("format") == "ssl_aug.imagefolder" else None
    except (OSError, ValueError):
        return None


def resolve_tree(root: Path, split: str) -> Path:
    """root/<split> if it exists; a plain class tree (no train/val/test sub-folders) serves as 'train'."""
    if (root / split).is_dir():
        return root / split
    if not root.is_dir():
        raise SslAugError(f"image folder {root} does not exist; pass a folder with one sub-folder per class")
    present = [d for d in SPLIT_DIRS if (root / d).is_dir()]
    if split in ("train", "all") and not present:
        return root
    raise SslAugError(f"no split {split!r} in {root}; found split folders: {present or 'none'} "
                      "(a plain class tree is split 'train')")


def load_imagefolder(split: str, root, download: bool = False, size: int | None = None, cache=None,
                     workers: int | None = None, shard_size: int = 10000,
                     verbose: bool = True, groups=None, min_size: int = 0) -> ImageDataset:
    """Data set `imagefolder`: pack root[/split] on first use into `cache` (default
    <cache_root>/imagefolder/<name>-<hash>-<size>px) and load the shards; repack when files change.
    size None: the images' own size (ImageSizes.auto_size). min_size: skip images with a shorter side under it.
    groups: a CSV `path,group` (paths relative to the class tree) -> the data set's group labels."""
    from ssl_aug.data.npz import load_shards

    if root is None:
        raise SslAugError("dataset 'imagefolder' needs root=<folder with one sub-folder per class> "
                          "(recipe data.root=..., CLI --root)")
    tree = resolve_tree(Path(root).expanduser(), split)
    how = "data.options.size"
    if size is None:
        sizes = sample_image_sizes(tree)
        size = sizes.auto_size()
        how = (f"the images' median shorter side of {sizes.median} px" + (" capped" if size < sizes.median else "")
               + "; data.options.size sets another")
    if cache is None:
        key = hashlib.sha1(os.fsencode(str(tree.resolve()))).hexdigest()[:10]
        cache = cache_root() / "imagefolder" / f"{display_name(tree.resolve().name)}-{key}-{size}px"
    cache = Path(cache).expanduser()
    require_folder(cache, "image-folder cache ($SSL_AUG_CACHE or data.options.cache)")
    fp = tree_fingerprint(tree, size, min_size)
    meta = read_packed(cache)
    if meta is None or meta.get("fingerprint") != fp or meta.get("size") != size \
            or (groups is not None and not (cache / "files.txt").is_file()):
        pack_imagefolder(tree, cache, size, workers, shard_size, verbose=verbose, fingerprint=fp, min_size=min_size)
        meta = read_packed(cache)
    if verbose:
        print(f"image folder {display_name(str(tree))}: {meta.get('images')} images at {size}x{size} px "
              f"({how}), cached in {display_name(str(cache))} (ssl-aug data cache list|clear)",
              file=sys.stderr)
    ds = load_shards([cache / s for s in meta["shards"]], f"imagefolder/{split}", meta["classes"])
    if groups is not None:
        from ssl_aug.data.groups import groups_for_files, read_group_csv

        files = (cache / "files.txt").read_bytes().decode("utf-8", "surrogateescape").splitlines()
        ds.groups, ds.group_names = groups_for_files(files, read_group_csv(groups), f"groups CSV {groups}")
    return ds

