"""imagefolder packing: conversions, every bad input, labels, determinism, cache reuse, CLI entry."""

import io
import json
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ssl_aug.data import load_dataset
from ssl_aug.data import imagefolder as imf
from ssl_aug.data.imagefolder import pack_imagefolder
from ssl_aug.data.pack_command import pack_main
from ssl_aug.data.npz import load_shards
from ssl_aug.errors import SslAugError

S = 16


def _rgb(seed, w, h):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _png_bytes(img):
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A class tree with one of every bad input. Returns (root, expected) where expected maps
    relative path -> ("ok", check) or (skip reason,)."""
    root = tmp_path_factory.mktemp("tree")
    for d in ("cat/nested", "dog", "empty_class", "only_text", "broken"):
        (root / d).mkdir(parents=True)
    exp = {}

    def put(rel, img=None, data=None, fmt=None, **kw):
        p = root / rel
        if img is not None:
            img.save(p, fmt, **kw)
        else:
            p.write_bytes(data)
        return rel

    # plain RGB PNGs of various aspect ratios: exact reference = torchvision resize + center_crop
    for i, (w, h) in enumerate([(40, 30), (23, 57), (16, 16)]):
        exp[put(f"cat/rgb_{i}.png", _rgb(i, w, h))] = ("ok", "tv")
    exp[put("cat/nested/deep.png", _rgb(7, 20, 20))] = ("ok", "tv")
    exp[put("cat/cmyk.jpg", Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG", quality=95)] = \
        ("ok", ("color", (255, 0, 0), 3))
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (0, 0, 255, 255)  # left opaque blue, right fully transparent (black underneath)
    exp[put("cat/rgba.png", Image.fromarray(rgba, "RGBA"))] = ("ok", ("halves", (0, 0, 255), (255, 255, 255)))
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    exp[put("cat/palette.png", pal)] = ("ok", ("color", (12, 34, 56), 0))
    palt = pal.copy()
    palt.info["transparency"] = 1
    exp[put("cat/palette_transparent.png", palt, transparency=1)] = ("ok", ("color", (255, 255, 255), 0))
    exp[put("cat/gray16.png", Image.fromarray(np.full((20, 20), 0x8080, np.uint16)))] = \
        ("ok", ("color", (128, 128, 128), 0))  # scaled, not clipped to 255
    exp[put("cat/gray.png", Image.new("L", (20, 20), 77))] = ("ok", ("color", (77, 77, 77), 0))
    exp[put("cat/tiny.png", Image.new("RGB", (1, 1), (10, 200, 30)))] = ("ok", ("color", (10, 200, 30), 0))
    exp[put("cat/photo.webp", Image.new("RGB", (30, 24), (90, 60, 30)), "WEBP", lossless=True)] = \
        ("ok", ("color", (90, 60, 30), 0))
    exp[put("cat/bitmap.bmp", _rgb(11, 18, 25))] = ("ok", "tv")
    side = np.zeros((10, 20, 3), np.uint8)
    side[:, :10], side[:, 10:] = (255, 0, 0), (0, 0, 255)
    rot = Image.fromarray(side)
    exif = rot.getexif()
    exif[0x0112] = 6  # EXIF orientation "rotate 90 CW": the left (red) half ends on top
    exp[put("cat/exif_rotated.png", rot, exif=exif)] = ("ok", ("rows", (255, 0, 0), (0, 0, 255)))
    exp[put("cat/zero.jpg", data=b"")] = ("empty_file",)
    exp[put("cat/garbage.jpg", data=os.urandom(500))] = ("corrupt",)
    full = _png_bytes(_rgb(3, 64, 64))
    exp[put("cat/truncated.png", data=full[: len(full) // 2])] = ("truncated", "corrupt")
    jb = io.BytesIO()
    _rgb(4, 64, 64).save(jb, "JPEG", quality=90)
    exp[put("cat/truncated.jpg", data=jb.getvalue()[: len(jb.getvalue()) // 2])] = ("truncated", "corrupt")
    exp[put("cat/notes.txt", data=b"hello")] = ("not_image",)
    for i in range(3):
        exp[put(f"dog/d{i}.png", _rgb(100 + i, 25, 35))] = ("ok", "tv")
    exp[put("dog/big.jpg", _rgb(5, 300, 200), "JPEG", quality=95)] = ("ok", "jpeg")
    exp[put("only_text/readme.txt", data=b"no images")] = ("not_image",)
    exp[put("broken/bad.png", data=b"\x89PNG\r\n\x1a\nnot really")] = ("corrupt", "truncated")
    exp[put("README.md", data=b"stray")] = ("not_in_class_folder",)
    return root, exp


@pytest.fixture(scope="module")
def packed(tree, tmp_path_factory):
    root, exp = tree
    dst = tmp_path_factory.mktemp("packed")
    rep = pack_imagefolder(root, dst, size=S, workers=2, shard_size=5, verbose=False)
    return rep, dst


def _expected_order(root, exp, dst=None):
    """(relpath, label) of decodable files in the packer's order: a seeded shuffle of the tree
    (files.txt when dst is given; checked to be a permutation of the decodable files)."""
    classes = ["broken", "cat", "dog"]
    ok = sorted((r for r, e in exp.items() if e[0] == "ok"), key=lambda r: (r.split("/")[0], r))
    if dst is not None:
        packed = (dst / "files.txt").read_text().splitlines()
        assert sorted(packed) == sorted(ok)
        ok = packed
    return classes, [(r, classes.index(r.split("/")[0])) for r in ok]


def test_report_counts_every_bad_input(tree, packed):
    root, exp = tree
    rep, dst = packed
    classes, order = _expected_order(root, exp)
    assert rep.classes == classes
    assert rep.empty_classes == ["empty_class", "only_text"]
    assert rep.classes_without_images == ["broken"]
    assert rep.images == len(order) and rep.counts == [0, len(order) - 4, 4]
    skipped = {item.split(":")[0]: reason for reason, items in rep.skipped.items() for item in items}
    for rel, e in exp.items():
        if e[0] != "ok":
            assert skipped.get(rel) in e, (rel, skipped.get(rel))
    assert len(skipped) == sum(e[0] != "ok" for e in exp.values())
    assert rep.converted == {"CMYK": 1, "RGBA": 1, "P": 2, "I;16": 1, "L": 1}
    assert rep.upscaled == 2  # tiny.png and exif_rotated.png (10 px side)
    assert rep.shards == -(-len(order) // 5)  # shard_size 5
    on_disk = json.loads((dst / "pack_report.json").read_text())
    assert on_disk["skipped"] == rep.skipped and on_disk["images"] == rep.images
    text = rep.summary()
    assert "cat/garbage.jpg" in text and "empty_class" in text and f"skipped files: {rep.num_skipped}" in text


def test_packed_pixels_and_labels(tree, packed):
    root, exp = tree
    rep, dst = packed
    classes, order = _expected_order(root, exp, dst)
    ds = load_shards(sorted(dst.glob("shard_*.npz")), "t", rep.classes)
    assert ds.images.shape == (len(order), 3, S, S)
    assert ds.labels.tolist() == [lab for _, lab in order]
    for i, (rel, _) in enumerate(order):
        got = ds.images[i]
        kind = exp[rel][1]
        if kind in ("tv", "jpeg"):
            ref = TF.pil_to_tensor(TF.center_crop(TF.resize(Image.open(root / rel).convert("RGB"), S), S))
            diff = (got.int() - ref.int()).abs()
            if kind == "tv":
                assert diff.max() == 0, rel
            else:  # JPEG decoded at reduced DCT scale: close, not identical
                assert diff.float().mean() < 4, (rel, diff.float().mean())
        elif kind[0] == "color":
            want = torch.tensor(kind[1], dtype=torch.int32).view(3, 1, 1)
            assert (got.int() - want).abs().max() <= kind[2], (rel, got[:, 0, 0])
        else:  # halves: left / right (or top / bottom for "rows") of the output
            cut = (slice(None), slice(None)) if kind[0] == "halves" else (slice(None),)
            left, right = got[cut + (slice(0, S // 2 - 1),)], got[cut + (slice(S // 2 + 1, None),)]
            assert (left.int() - torch.tensor(kind[1]).view(3, 1, 1)).abs().max() == 0
            assert (right.int() - torch.tensor(kind[2]).view(3, 1, 1)).abs().max() == 0


def test_pack_deterministic_and_independent_of_workers_and_shards(tree, packed, tmp_path):
    root, _ = tree
    rep, dst = packed
    rep1 = pack_imagefolder(root, tmp_path / "one", size=S, workers=1, shard_size=1000, verbose=False)
    a = load_shards(sorted(dst.glob("shard_*.npz")), "a", rep.classes)
    b = load_shards(sorted((tmp_path / "one").glob("shard_*.npz")), "b", rep1.classes)
    assert rep1.shards == 1 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert rep1.skipped == rep.skipped


def test_load_dataset_packs_once_then_reuses(tree, tmp_path, monkeypatch):
    root, exp = tree
    src = tmp_path / "src"
    for d in ("a", "b"):
        (src / d).mkdir(parents=True)
        for i in range(3):
            _rgb(i + (10 if d == "b" else 0), 20, 20).save(src / d / f"{i}.png")
    cache = tmp_path / "cache"
    ds = load_dataset("imagefolder", root=src, size=S, cache=cache, verbose=False)
    assert ds.images.shape == (6, 3, S, S) and ds.classes == ["a", "b"]
    assert sorted(ds.labels.tolist()) == [0] * 3 + [1] * 3  # packed in a seeded shuffle

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imf, "decode_image", boom)
    again = load_dataset("imagefolder", root=src, size=S, cache=cache, verbose=False)
    assert torch.equal(again.images, ds.images)
    monkeypatch.undo()
    _rgb(99, 20, 20).save(src / "b" / "new.png")  # source changed -> repack
    grown = load_dataset("imagefolder", root=src, size=S, cache=cache, verbose=False)
    assert len(grown) == 7 and grown.labels.tolist().count(1) == 4


def test_default_cache_under_ssl_aug_cache(tmp_path, monkeypatch):
    (tmp_path / "src" / "k").mkdir(parents=True)
    _rgb(0, 12, 12).save(tmp_path / "src" / "k" / "a.png")
    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    assert len(load_dataset("imagefolder", root=tmp_path / "src", size=8, verbose=False)) == 1
    metas = list((tmp_path / "cache" / "imagefolder").glob("src-*-8px/meta.json"))
    assert len(metas) == 1 and json.loads(metas[0].read_text())["images"] == 1


def test_split_folders(tmp_path):
    for split, n in (("train", 2), ("val", 1)):
        for c in ("x", "y"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                _rgb(i, 12, 12).save(tmp_path / split / c / f"{i}.png")
    val = load_dataset("imagefolder", "val", root=tmp_path, size=8, cache=tmp_path / "c_val", verbose=False)
    assert len(val) == 2 and val.name == "imagefolder/val"
    with pytest.raises(SslAugError, match="no split 'test'.*train"):
        load_dataset("imagefolder", "test", root=tmp_path, size=8, cache=tmp_path / "c_t", verbose=False)


def test_bad_trees_raise_one_line(tmp_path):
    (tmp_path / "src" / "c").mkdir(parents=True)
    (tmp_path / "src" / "c" / "x.jpg").write_bytes(b"")
    with pytest.raises(SslAugError, match="no decodable images") as e:
        pack_imagefolder(tmp_path / "src", tmp_path / "dst", size=8, verbose=False)
    assert "\n" not in str(e.value)
    (tmp_path / "nocls").mkdir()
    with pytest.raises(SslAugError, match="no class folders"):
        pack_imagefolder(tmp_path / "nocls", tmp_path / "dst2", size=8, verbose=False)
    with pytest.raises(SslAugError, match="inside the source"):
        pack_imagefolder(tmp_path / "src", tmp_path / "src" / "out", size=8, verbose=False)
    with pytest.raises(SslAugError, match="needs root"):
        load_dataset("imagefolder")


def test_pack_main(tree, tmp_path, capsys):
    root, exp = tree
    n = sum(e[0] == "ok" for e in exp.values())
    argv = [str(root), str(tmp_path / "out"), "--size", "8", "--workers", "2", "--shard-size", "4"]
    assert pack_main(argv) == 0
    out, err = capsys.readouterr()
    assert f"{n} images, 3 classes" in out and "skipped files:" in err and "cat/zero.jpg" in err
    assert (tmp_path / "out" / "classes.txt").read_text().split() == ["broken", "cat", "dog"]
    npz = load_dataset("npz", "all", root=tmp_path / "out")  # packed output is a plain npz shard folder
    assert len(npz) == n and npz.classes == ["broken", "cat", "dog"]
    assert pack_main([str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssl-aug: error: image folder") and err.count("\n") == 1


def test_stratified_holdout_per_class_counts_disjoint_and_seeded():
    from ssl_aug.data.holdout import stratified_holdout

    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1 + [-1] * 3 + [3] * 2)
    bank, held = stratified_holdout(labels, 0.2, seed=0)
    assert set(bank.tolist()).isdisjoint(held.tolist())
    assert sorted(bank.tolist() + held.tolist()) == [i for i, y in enumerate(labels.tolist()) if y >= 0]
    counts = {c: int((labels[held] == c).sum()) for c in range(4)}
    assert counts == {0: 2, 1: 1, 2: 0, 3: 1}  # round(0.2 n), at least 1, at most n - 1; a lone image stays
    again, held_again = stratified_holdout(labels, 0.2, seed=0)
    assert torch.equal(again, bank) and torch.equal(held_again, held)
    assert any(not torch.equal(stratified_holdout(labels, 0.2, seed=s)[1], held) for s in range(1, 6))
    with pytest.raises(ValueError):
        stratified_holdout(labels, 1.0)
