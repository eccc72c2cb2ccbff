"""Read a folder of tar shards written by `ssl-aug data pack --format shards`.

`read_index(root) -> ShardIndex` checks index.json and that every shard is present with its
recorded size (one line naming a missing or truncated shard). `iter_rows(path, starts, ends)`
yields samples of one shard as (key, jpeg bytes, label, width, height), seeking to each sample's
byte range recorded in the index (memory: one sample).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_aug.errors import SslAugError

FORMAT = "ssl_aug.shards"


@dataclass
class ShardIndex:
    """A packed shard folder. names/counts/offsets per shard; labels (N,) int64 in stored order."""

    root: Path
    classes: list[str]
    names: list[str]
    counts: np.ndarray  # (S,) int64 images per shard
    offsets: np.ndarray  # (S,) int64 global index of each shard's first image
    labels: np.ndarray  # (N,) int64
    starts: np.ndarray  # (N,) int64 byte offset of each sample in its shard
    ends: np.ndarray  # (N,) int64 byte offset just past each sample
    meta: dict

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def path(self, s: int) -> Path:
        return self.root / self.names[s]


def is_shard_folder(root) -> bool:
    """True when `root` holds a finished shard pack (index.json of this format)."""
    try:
        return json.loads((Path(root).expanduser() / "index.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_index(root, classes: list[str] | None = None, check_files: bool = True) -> ShardIndex:
    """Load and check root/index.json. classes: the class list a resumed run was trained with
    (a different list is refused in one line)."""
    root = Path(root).expanduser()
    f = root / "index.json"
    if not f.is_file():
        hint = " (unfinished pack: run `ssl-aug data pack ... --format shards` again to finish it)" \
            if (root / ".pack").is_dir() else ""
        raise SslAugError(f"no shard index {f}{hint}; pack an image folder with "
                          "`ssl-aug data pack SRC DST --format shards`")
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise SslAugError(f"{f}: not a readable JSON shard index ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SslAugError(f"{f}: not a shard index (format {meta.get('format') if isinstance(meta, dict) else '?'!r}, "
                          f"expected {FORMAT!r})")
    if classes is not None and list(classes) != list(meta["classes"]):
        diff = next((i for i, (a, b) in enumerate(zip(classes, meta["classes"])) if a != b),
                    min(len(classes), len(meta["classes"])))
        raise SslAugError(f"shard set {root} was packed with {len(meta['classes'])} classes but this run was "
                          f"trained with {len(classes)} (first difference at label {diff}); "
                          "resume with the shard set the run started with")
    shards = meta["shards"]
    if check_files:
        for sh in shards:
            p = root / sh["name"]
            if not p.is_file():
                raise SslAugError(f"shard {p} listed in {f} is missing; restore it or pack the folder again")
            if p.stat().st_size != sh["bytes"]:
                raise SslAugError(f"shard {p} is truncated or changed ({p.stat().st_size} bytes, index says "
                                  f"{sh['bytes']}); restore it or pack the folder again")
    counts = np.asarray([sh["count"] for sh in shards], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    labels = np.asarray([y for sh in shards for y in sh["labels"]], dtype=np.int64)
    starts = np.asarray([o for sh in shards for o in sh["offsets"][:-1]], dtype=np.int64)
    ends = np.asarray([o for sh in shards for o in sh["offsets"][1:]], dtype=np.int64)
    return ShardIndex(root, list(meta["classes"]), [sh["name"] for sh in shards], counts, offsets, labels,
                      starts, ends, meta)


def iter_rows(path: Path, starts, ends):
    """Samples stored at byte ranges [starts[i], ends[i]) of one shard (from the index), in the given
    order: (key, jpeg bytes, label, width, height). Memory: one sample. A shard that ends early or
    is unreadable raises SslAugError naming it."""
    try:
        with open(path, "rb") as f:
            for a, b in zip(starts, ends):
                f.seek(int(a))
                blob = f.read(int(b) - int(a))
                if len(blob) != int(b) - int(a):
                    raise EOFError(f"{len(blob)} of {int(b) - int(a)} bytes at offset {int(a)}")
                yield _sample(*tar_members(blob), path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SslAugError(f"shard {path} is unreadable or truncated ({type(e).__name__}: {e}); "
                          "restore it or pack the folder again") from None


def tar_members(blob: bytes) -> tuple[str | None, dict]:
    """The regular files of one sample's tar records -> (key, {extension: bytes}).

    Reads the ustar headers directly (name, prefix, size, type, header checksum; 2-3x faster than
    `tarfile` per sample); any other record type (pax, GNU long name) goes through `tarfile`.
    A header whose checksum does not match raises tarfile.TarError."""
    parts, key, off, n = {}, None, 0, len(blob)
    while off + 512 <= n:
        h = blob[off:off + 512]
        if not h.strip(b"\0"):
            break  # end-of-archive blocks
        try:
            stored = int(h[148:156].strip(b"\0 ") or b"0", 8)
            size = int(h[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise tarfile.HeaderError(f"bad number field in the header at byte {off}") from None
        if stored != sum(h) - sum(h[148:156]) + 256:  # checksum: header bytes, its own field read as spaces
            raise tarfile.HeaderError(f"header checksum mismatch at byte {off}")
        kind = h[156:157]
        if kind not in (b"0", b"\0"):
            return _members_by_tarfile(blob)
        name = h[:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
        prefix = h[345:500].rstrip(b"\0").decode("utf-8", "surrogateescape")
        if off + 512 + size > n:
            raise tarfile.ReadError(f"member {name} runs past the sample's byte range")
        key, _, ext = (f"{prefix}/{name}" if prefix else name).rpartition("/")[2].partition(".")
        parts[ext] = blob[off + 512:off + 512 + size]
        off += 512 + -(-size // 512) * 512
    return key, parts


def _members_by_tarfile(blob: bytes) -> tuple[str | None, dict]:
    parts, key = {}, None
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
        for m in tar:
            if m.isfile():
                key, _, ext = m.name.rpartition("/")[2].partition(".")
                parts[ext] = tar.extractfile(m).read()
    return key, parts


def _sample(key, parts: dict, path):
    data = parts.get("jpg") or parts.get("jpeg")
    try:
        info = json.loads(parts["json"])
        return key, data, int(parts["cls"]), int(info["width"]), int(info["height"])
    except (KeyError, ValueError, TypeError):
        raise SslAugError(f"shard {path}: sample {key} lacks .cls/.json metadata; "
                          "pack it with `ssl-aug data pack --format shards`") from None
