"""Class-per-folder image trees -> WebDataset tar shards of encoded images (`--format shards`).

`pack_shards(src, dst)` writes dst/shard-00000.tar, ... in the WebDataset layout (plain tar
members `<key>.jpg`, `<key>.cls` (label, decimal text), `<key>.json` ({"width", "height",
"label", "path"}: the stored image's size and its path relative to the tree)), written with the
standard library's `tarfile` (no `webdataset` dependency; `webdataset.WebDataset` and
`wds.decode` read the shards as they are). Then dst/index.json (written last: its presence marks a
finished pack) and dst/pack_report.json.

Images: a JPEG that is already RGB, upright (no EXIF rotation) and within `max_res` is stored with
its original bytes. Every other image (PNG, WebP, BMP, CMYK / grayscale / 16-bit / alpha JPEG or
PNG, EXIF-rotated or over `max_res`) is converted to RGB exactly as the npz packer converts it
(alpha over white, 16-bit scaled, EXIF orientation applied), its longer side capped at `max_res`
(bicubic, antialiased) and re-encoded as JPEG at quality 95 with 4:4:4 chroma. Every image is
fully decoded once while packing, so a corrupt or truncated file is a counted, listed skip here
rather than during training.

Order: the images of the whole tree are shuffled with `seed` before they are cut into shards, so
every shard (and every stretch of a shard) mixes all classes. Shards are written in parallel by
worker processes, each tar written atomically. Resumable: a shard whose record (dst/.pack/) matches
the current plan and whose sha256 still matches the file is kept; everything else is rewritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_write, atomic_write_json, sha256_file

FORMAT, VERSION = "ssl_aug.shards", 1
JPEG_QUALITY = 95


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.tar"


def encode_image(path: str, max_res: int | None):
    """One file -> (jpeg bytes | None, reason, detail). reason "ok": detail = (width, height, source mode,
    reencoded); else a skip reason ("empty_file", "corrupt", "truncated") and a one-line message."""
    from PIL import Image, ImageOps

    from ssl_aug.data.imagefolder import to_rgb

    try:
        data = Path(path).read_bytes()
        if not data:
            return None, "empty_file", "0 bytes"
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode, (w, h) = im.format, im.mode, im.size
            rotated = im.getexif().get(0x0112, 1) not in (1, None)
            keep = fmt == "JPEG" and mode == "RGB" and not rotated and (not max_res or max(w, h) <= max_res)
            if keep:
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # cheapest full read: checks every byte
            im.load()
            if keep:
                return data, "ok", (w, h, mode, False)
            ImageOps.exif_transpose(im, in_place=True)
            rgb = to_rgb(im)
        if max_res and max(rgb.size) > max_res:
            s = max_res / max(rgb.size)
            rgb = rgb.resize((max(1, round(rgb.size[0] * s)), max(1, round(rgb.size[1] * s))), Image.BICUBIC)
        out = io.BytesIO()
        rgb.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        return out.getvalue(), "ok", (rgb.size[0], rgb.size[1], mode, True)
    except Exception as e:  # any decoder failure is a skipped file, never a traceback
        msg = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the file", " ".join(f"{type(e).__name__}: {e}".split()))
        return None, ("truncated" if "truncated" in msg.lower() else "corrupt"), msg


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: str, items: list, src: str, max_res: int | None, first_key: int) -> dict:
    """Encode items [(file path, label)] into the tar at `path` (atomic) -> the shard's record."""
    rec = {"count": 0, "labels": [], "sizes": [], "keys": [], "offsets": [], "skipped": {}, "converted": {},
           "reencoded": 0}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for j, (fp, label) in enumerate(items):
            data, reason, detail = encode_image(fp, max_res)
            rel = os.fsencode(os.path.relpath(fp, src)).decode("utf-8", "replace").replace(os.sep, "/")
            if data is None:
                rec["skipped"].setdefault(reason, []).append(f"{rel}: {detail}")
                continue
            w, h, mode, reenc = detail
            key = f"{first_key + j:09d}"
            rec["offsets"].append(tar.offset)  # byte offset of the sample's first header: readers seek here
            _add(tar, f"{key}.jpg", data)
            _add(tar, f"{key}.cls", str(label).encode())
            _add(tar, f"{key}.json", json.dumps({"width": w, "height": h, "label": label, "path": rel}).encode())
            rec["count"] += 1
            rec["labels"].append(label)
            rec["sizes"].append([w, h])
            rec["keys"].append(key)
            rec["reencoded"] += reenc
            if mode != "RGB":
                rec["converted"][mode] = rec["converted"].get(mode, 0) + 1
        rec["offsets"].append(tar.offset)  # end of the last sample
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    rec["sha256"], rec["bytes"] = sha256_file(path), os.path.getsize(path)
    return rec


def plan_fingerprint(files: list, classes: list[str], seed: int, shard_size: int, max_res) -> str:
    h = hashlib.sha1(json.dumps([FORMAT, VERSION, classes, seed, shard_size, max_res]).encode())
    for fp, label in files:
        st = os.stat(fp)
        h.update(os.fsencode(fp) + f"|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _kept(dst: Path, name: str, plan: str) -> dict | None:
    """The record of a finished shard of this plan whose file still has its checksum, else None."""
    try:
        rec = json.loads((dst / ".pack" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    if rec.get("plan") != plan or not (dst / name).is_file() or (dst / name).stat().st_size != rec.get("bytes"):
        return None
    return rec if sha256_file(dst / name) == rec.get("sha256") else None


def pack_shards(src, dst, shard_size: int = 1000, max_res: int | None = None, workers: int | None = None,
                seed: int = 0, verbose: bool = True, fingerprint: str | None = None):
    """Pack the class tree `src` into tar shards in `dst` (see module docstring) -> PackReport.
    fingerprint: recorded in the index as "source_fingerprint" (cache reuse)."""
    from tqdm import tqdm

    from ssl_aug.data.imagefolder import PackReport, display_name, require_folder, scan_tree

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    for key, val, low in (("--shard-size", shard_size, 1), ("--workers", workers or 1, 1), ("--max-res", max_res or 1, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise SslAugError(f"{key} must be a positive integer, got {val!r}")
    workers = workers or os.cpu_count() or 1
    if dst.resolve().is_relative_to(src.resolve()):
        raise SslAugError(f"destination {dst} is inside the source tree {src}; choose a folder outside it")
    require_folder(dst, "pack destination")
    t0 = time.perf_counter()
    classes, files, empty, stray, bad = scan_tree(src)
    order = np.random.default_rng(seed).permutation(len(files))
    files = [files[i] for i in order]  # one global shuffle: every shard mixes all classes
    plan = plan_fingerprint(files, classes, seed, shard_size, max_res)
    try:
        (dst / ".pack").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SslAugError(f"could not create {display_name(str(dst))}: {exc.strerror or exc}") from None
    (dst / "index.json").unlink(missing_ok=True)  # unfinished until rewritten
    chunks = [files[i:i + shard_size] for i in range(0, len(files), shard_size)]
    names = [shard_name(i) for i in range(len(chunks))]
    for old in dst.glob("shard-*.tar"):  # shards of an earlier, larger plan
        if old.name not in names:
            old.unlink()
    records = {n: r for n in names if (r := _kept(dst, n, plan)) is not None}
    todo = [i for i, n in enumerate(names) if n not in records]
    bar = tqdm(total=len(files), unit="img", desc=f"pack {src.name}", disable=not verbose, file=sys.stderr)
    bar.update(sum(len(chunks[i]) for i in range(len(chunks)) if names[i] in records))
    with ProcessPoolExecutor(min(workers, max(1, len(todo)))) as pool:
        futs = {pool.submit(write_shard, str(dst / names[i]), chunks[i], str(src), max_res, i * shard_size): i
                for i in todo}
        for fut in futs:
            i = futs[fut]
            rec = dict(fut.result(), plan=plan)
            atomic_write_json(dst / ".pack" / f"{names[i]}.json", rec)
            records[names[i]] = rec
            bar.update(len(chunks[i]))
    bar.close()
    rep = PackReport(display_name(str(src)), display_name(str(dst)), max_res or 0, classes, [0] * len(classes),
                     empty_classes=empty, non_utf8_names=bad)
    for rel, reason in stray:
        rep.skipped.setdefault(reason, []).append(rel)
    shards, sizes, reenc = [], [], 0
    for n in names:
        r = records[n]
        for reason, items in r["skipped"].items():
            rep.skipped.setdefault(reason, []).extend(items)
        for mode, c in r["converted"].items():
            rep.converted[mode] = rep.converted.get(mode, 0) + c
        for label in r["labels"]:
            rep.counts[label] += 1
        sizes.extend(r["sizes"])
        reenc += r["reencoded"]
        shards.append({"name": n, "count": r["count"], "bytes": r["bytes"], "sha256": r["sha256"],
                       "first_key": r["keys"][0] if r["keys"] else None, "labels": r["labels"],
                       "offsets": r["offsets"]})
    rep.images, rep.shards, rep.seconds = sum(rep.counts), len(shards), time.perf_counter() - t0
    rep.classes_without_images = [c for c, n in zip(classes, rep.counts) if n == 0]
    from dataclasses import asdict

    atomic_write_json(dst / "pack_report.json", asdict(rep))
    if rep.images == 0:
        raise SslAugError(f"no decodable images in {src} ({rep.num_skipped} files skipped); "
                          f"see {dst / 'pack_report.json'}")
    wh = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    index = {"format": FORMAT, "version": VERSION, "classes": classes, "counts": rep.counts, "images": rep.images,
             "seed": seed, "shard_size": shard_size, "max_res": max_res, "reencoded": reenc, "plan": plan,
             "sizes": {k: {"min": int(wh[:, j].min()), "median": int(np.median(wh[:, j])), "max": int(wh[:, j].max())}
                       for j, k in enumerate(("width", "height"))},
             "shards": shards, "source": display_name(str(src)), "source_fingerprint": fingerprint}
    atomic_write_json(dst / "index.json", index)  # written last: marks a finished pack
    if verbose:
        print(rep.summary().replace(" at 0x0 ", " ").replace(f" at {max_res}x{max_res} ", f" (longer side <= {max_res}) "),
              file=sys.stderr)
        if reenc:
            print(f"re-encoded as JPEG (quality {JPEG_QUALITY}): {reenc}; others kept as their original bytes",
                  file=sys.stderr)
    return rep
