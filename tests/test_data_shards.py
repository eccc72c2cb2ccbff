"""Tar shards of encoded images: packing (bytes kept, conversions, skips, shuffle, resume), reading
(missing / truncated shards), crop boxes against torchvision, crops decoded from the whole image."""

import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from ssl_aug.data.crop_decode import (canvas_groups, crop_plan, dct_reduction, decode_crops, decode_crops_device,
                                      decode_eval, image_generator, sample_boxes, sample_boxes_batch)
from ssl_aug.data.imagefolder import to_rgb
from ssl_aug.data.pack_command import pack_main
from ssl_aug.data.shard_pack import pack_shards
from ssl_aug.data.shard_read import _members_by_tarfile, iter_rows, read_index, tar_members
from ssl_aug.errors import SslAugError

CLASSES = 6
PER_CLASS = 12


def smooth(seed, w, h, mode="RGB"):
    """A smooth image (JPEG-friendly, so reduced-DCT decodes stay close to full decodes)."""
    r = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    chans = [127 + 100 * np.sin(2 * math.pi * (r.uniform(0.5, 2) * x + r.uniform(0.5, 2) * y) + r.uniform(0, 6))
             for _ in range(3)]
    a = np.stack(chans, -1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(a, "RGB")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        d = root / f"class{c}"
        d.mkdir()
        for i in range(PER_CLASS):
            w, h = (int(v) for v in rng.integers(40, 100, 2))
            smooth(c * 100 + i, w, h).save(d / f"{i:02d}.jpg", quality=90)
    smooth(1, 30, 20, "RGBA").save(root / "class0" / "alpha.png")
    smooth(2, 30, 20, "CMYK").save(root / "class1" / "cmyk.jpg")
    smooth(3, 30, 20, "L").save(root / "class2" / "gray.jpg")
    Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).save(root / "class3" / "deep.png")
    smooth(4, 300, 200).save(root / "class4" / "big.jpg", quality=90)
    (root / "class5" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    good = io.BytesIO()
    smooth(5, 64, 64).save(good, "JPEG")
    (root / "class5" / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "class5" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def packed(tree, tmp_path_factory):
    dst = tmp_path_factory.mktemp("packed") / "shards"
    rep = pack_shards(tree, dst, shard_size=10, max_res=128, workers=2, seed=3, verbose=False)
    return dst, rep


def members(path):
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}


def test_pack_layout_counts_checksums_and_kept_bytes(tree, packed):
    dst, rep = packed
    index = json.loads((dst / "index.json").read_text())
    n = CLASSES * PER_CLASS + 5  # + alpha, cmyk, gray, 16-bit, big
    assert index["images"] == n == rep.images and sum(index["counts"]) == n
    assert index["classes"] == [f"class{c}" for c in range(CLASSES)]
    counts = [s["count"] for s in index["shards"]]  # shards are cut before decoding: skips shorten theirs
    assert len(counts) == math.ceil((n + 3) / 10) and sum(counts) == n and max(counts) == 10
    import hashlib
    for s in index["shards"]:
        assert hashlib.sha256((dst / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    listed = " ".join(x for items in rep.skipped.values() for x in items)
    assert rep.num_skipped == 3 and all(f"class5/{f}.jpg" in listed for f in ("corrupt", "truncated", "empty"))
    assert set(rep.skipped) <= {"corrupt", "truncated", "empty_file"}
    assert index["reencoded"] == 5  # 4 non-RGB-JPEG sources + 1 over max_res; the rest keep their bytes
    kept = 0
    for s in index["shards"]:
        m = members(dst / s["name"])
        keys = sorted({k.split(".")[0] for k in m})
        assert len(keys) == s["count"]
        for k in keys:
            info = json.loads(m[f"{k}.json"])
            assert int(m[f"{k}.cls"]) == info["label"] == index["classes"].index(info["path"].split("/")[0])
            im = Image.open(io.BytesIO(m[f"{k}.jpg"]))
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (info["width"], info["height"])
            if m[f"{k}.jpg"] == (tree / info["path"]).read_bytes():
                kept += 1
            if info["path"].endswith("big.jpg"):
                assert max(im.size) == 128 and im.size == (128, 85)
    assert kept == CLASSES * PER_CLASS


@pytest.mark.parametrize("name", ["class0/alpha.png", "class1/cmyk.jpg", "class2/gray.jpg", "class3/deep.png"])
def test_pack_converts_like_the_npz_packer(tree, packed, name):
    dst, _ = packed
    index = read_index(dst)
    ref = np.asarray(to_rgb(Image.open(tree / name)), dtype=np.float64)
    for s in range(len(index.names)):
        lo, hi = index.offsets[s], index.offsets[s] + index.counts[s]
        for key, data, label, w, h in iter_rows(index.path(s), index.starts[lo:hi], index.ends[lo:hi]):
            m = members(index.path(s))
            if json.loads(m[f"{key}.json"])["path"] == name:
                got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
                assert got.shape == ref.shape and np.abs(got - ref).mean() < 2.0  # JPEG q95 of the same pixels
                return
    pytest.fail(f"{name} not packed")


def test_pack_shuffles_classes_across_shards(packed):
    index = read_index(packed[0])
    first = index.labels[:10]
    assert len(set(first.tolist())) >= 4  # a class-by-class order would give 1
    assert sorted(index.labels.tolist()) == sorted(np.repeat(np.arange(CLASSES), PER_CLASS).tolist()
                                                   + [0, 1, 2, 3, 4])


def test_pack_resume_keeps_verified_shards_and_rewrites_damaged_ones(tree, tmp_path):
    dst = tmp_path / "s"
    pack_shards(tree, dst, shard_size=20, workers=1, verbose=False)
    first = {p.name: p.stat().st_mtime_ns for p in dst.glob("shard-*.tar")}
    bad = dst / "shard-00001.tar"
    bad.write_bytes(bad.read_bytes()[:-100] + b"\0" * 100)  # same size, different bytes
    (dst / "index.json").unlink()
    pack_shards(tree, dst, shard_size=20, workers=1, verbose=False)
    again = {p.name: p.stat().st_mtime_ns for p in dst.glob("shard-*.tar")}
    assert [k for k in first if first[k] != again[k]] == ["shard-00001.tar"]
    assert read_index(dst).num_samples == CLASSES * PER_CLASS + 5


def test_missing_and_truncated_shards_are_one_line(packed, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(packed[0], dst)
    (dst / "shard-00002.tar").write_bytes((dst / "shard-00002.tar").read_bytes()[:500])
    with pytest.raises(SslAugError, match="shard-00002.tar is truncated") as e:
        read_index(dst)
    assert "\n" not in str(e.value)
    (dst / "shard-00002.tar").unlink()
    with pytest.raises(SslAugError, match="shard-00002.tar listed in .* is missing"):
        read_index(dst)
    with pytest.raises(SslAugError, match="packed with 6 classes but this run was trained with 2"):
        read_index(packed[0], classes=["a", "b"])


def test_cli_pack_shards(tree, tmp_path, capsys):
    assert pack_main([str(tree), str(tmp_path / "o"), "--format", "shards", "--shard-size", "50", "--quiet"]) == 0
    assert "data.name=shards" in capsys.readouterr().out
    assert len(read_index(tmp_path / "o").names) == 2


# ------------------------------------------------------------------ crop boxes and decoding

def test_boxes_follow_torchvision_get_params_statistics():
    """Area fraction, log aspect ratio and position of our boxes vs torchvision's get_params (same rule,
    independent draws): means within a few standard errors; the centre fallback for extreme shapes."""
    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 4000
    plan = crop_plan([(32, scale, ratio)])
    for w, h in [(500, 375), (120, 400)]:
        ours = torch.cat([sample_boxes(w, h, plan, image_generator(1, 0, i)) for i in range(n)]).double()
        torch.manual_seed(0)
        ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, h, w), scale, ratio) for _ in range(n)]).double()
        for stat in (lambda b: b[:, 2] * b[:, 3] / (w * h), lambda b: torch.log(b[:, 3] / b[:, 2]),
                     lambda b: (b[:, 0] + b[:, 2] / 2) / h, lambda b: (b[:, 1] + b[:, 3] / 2) / w):
            a, r = stat(ours), stat(ref)
            se = math.sqrt(a.var() / n + r.var() / n)
            assert abs(a.mean() - r.mean()) < 4 * se, (w, h, a.mean(), r.mean())
    # a 1000 x 10 image never fits the ratio: torchvision's centre crop with the ratio clamped
    box = sample_boxes(1000, 10, plan, image_generator(0, 0, 0))
    assert box.tolist() == [[0, (1000 - 13) // 2, 10, 13]]
    assert torch.equal(sample_boxes(640, 480, plan, image_generator(5, 2, 7)),
                       sample_boxes(640, 480, plan, image_generator(5, 2, 7)))  # replayable


def test_multi_view_boxes_land_in_their_views_slots():
    """A plan mixing two (scale, ratio) groups: each slot's boxes follow its own view's area range, and
    two views of one group are independent draws."""
    plan = crop_plan([(32, (0.5, 1.0), (3 / 4, 4 / 3)), (16, (0.05, 0.1), (3 / 4, 4 / 3)),
                      (32, (0.5, 1.0), (3 / 4, 4 / 3))])
    boxes = torch.stack([sample_boxes(400, 300, plan, image_generator(0, 0, i)) for i in range(200)]).double()
    area = boxes[..., 2] * boxes[..., 3] / (400 * 300)
    assert area[:, [0, 2]].min() > 0.48 and area[:, 1].max() < 0.11  # rounding of h and w
    assert (boxes[:, 0] != boxes[:, 2]).any(1).float().mean() > 0.95


def _jpeg(w, h, seed=0):
    b = io.BytesIO()
    smooth(seed, w, h).save(b, "JPEG", quality=92)
    return b.getvalue()


def _full(data):
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


def test_crops_match_torchvision_resized_crop_on_the_full_image():
    """r = 1 (no DCT reduction): equal to torchvision resized_crop(antialias=True) up to 1 grey level;
    r > 1: the reduced-DCT decode's error, mean absolute difference under 2.5 grey levels."""
    plan = crop_plan([(64, (0.08, 1.0), (3 / 4, 4 / 3))] * 2 + [(24, (0.05, 0.3), (3 / 4, 4 / 3))] * 4)
    sizes = [v.size for v in plan]
    for (w, h), exact in [((160, 120), True), ((1200, 900), False)]:
        data = _jpeg(w, h)
        full = _full(data)
        seen = set()
        for i in range(6):
            boxes = sample_boxes(w, h, plan, image_generator(0, 0, i))
            r = dct_reduction(boxes, sizes)
            seen.add(r)
            crops = decode_crops(data, boxes, sizes)
            for box, s, c in zip(boxes.tolist(), sizes, crops):
                ref = TF.resized_crop(full, *box, [s, s], antialias=True)
                d = (c.float() - ref.float()).abs()
                if r == 1:
                    assert d.max() <= 1, (box, d.max())
                else:
                    assert d.mean() < 2.5, (box, r, d.mean())
        assert (seen == {1}) if exact else (max(seen) > 1)


def test_one_decode_serves_every_view_at_the_coarsest_safe_scale():
    boxes = torch.tensor([[0, 0, 800, 800], [0, 0, 400, 200]])
    assert dct_reduction(boxes, [224, 96]) == 2  # 800/224 -> 2 (3.57), 200/96 -> 2 (2.08): min 2
    assert dct_reduction(boxes, [96, 96]) == 2
    assert dct_reduction(torch.tensor([[0, 0, 900, 900]]), [96]) == 8
    assert dct_reduction(torch.tensor([[0, 0, 50, 60]]), [96]) == 1  # upscaling: full decode


def test_device_path_on_cpu_matches_the_cpu_path():
    plan = crop_plan([(48, (0.08, 1.0), (3 / 4, 4 / 3))] * 2 + [(16, (0.05, 0.3), (3 / 4, 4 / 3))] * 2)
    sizes = [v.size for v in plan]
    datas = [_jpeg(120 + 20 * i, 100 + 10 * i, i) for i in range(4)]
    dims = [(120 + 20 * i, 100 + 10 * i) for i in range(4)]
    boxes = torch.stack([sample_boxes(w, h, plan, image_generator(0, 0, i)) for i, (w, h) in enumerate(dims)])
    got = decode_crops_device(datas, boxes, sizes, "cpu")
    assert [tuple(g.shape) for g in got] == [(4, 3, s, s) for s in sizes] and got[0].dtype == torch.uint8
    for i, d in enumerate(datas):
        ref = decode_crops(d, boxes[i], sizes)
        for v in range(len(sizes)):
            # same decoder output; the filters differ when shrinking (roi_align's area average vs the
            # triangle antialias): a few grey levels on average on these smooth images
            assert (got[v][i].float() - ref[v].float()).abs().mean() < 5.0


def test_device_crops_read_each_image_alone_whatever_its_canvas():
    """Edge-repeated padding: a crop touching an image's right or bottom edge equals roi_align on that image
    alone (zero padding darkened it); canvas groups under a small budget give the same crops."""
    from torchvision.io import decode_jpeg
    from torchvision.ops import roi_align

    plan = crop_plan([(32, (0.3, 1.0), (3 / 4, 4 / 3))] * 2 + [(12, (0.05, 0.3), (3 / 4, 4 / 3))])
    sizes = [v.size for v in plan]
    dims = [(60, 40), (130, 90), (48, 120), (200, 150), (90, 90)]
    datas = [_jpeg(w, h, i) for i, (w, h) in enumerate(dims)]
    boxes = torch.stack([sample_boxes(w, h, plan, image_generator(4, 0, i)) for i, (w, h) in enumerate(dims)])
    boxes[0, 0] = torch.tensor([10, 20, 30, 40])  # a box ending at the right and bottom edge of image 0
    one = decode_crops_device(datas, boxes, sizes, "cpu")
    small = decode_crops_device(datas, boxes, sizes, "cpu", canvas_floats=3 * 130 * 90)
    assert all(torch.equal(a, b) for a, b in zip(one, small))
    for i, d in enumerate(datas):
        x = decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8))[None].float()
        for v, s in enumerate(sizes):
            t, l, h, w = boxes[i, v].float().tolist()
            ref = roi_align(x, torch.tensor([[0, l, t, l + w, t + h]]), (s, s), 1.0, -1, True)
            assert torch.equal(one[v][i], ref[0].round().clamp(0, 255).to(torch.uint8)), (i, v)


def test_canvas_groups_keep_each_padded_canvas_within_the_budget():
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in rng.integers(20, 400, 2)) for _ in range(200)] + [(1000, 800)]
    budget = 3 * 16 * 300 * 300
    groups = canvas_groups(shapes, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(shapes)))
    for g in groups:
        hm, wm = max(shapes[i][0] for i in g), max(shapes[i][1] for i in g)
        assert len(g) == 1 or 3 * len(g) * hm * wm <= budget
    assert canvas_groups(shapes[:5]) == [list(range(5))]  # a batch that fits keeps its order in one group


def test_batched_boxes_equal_each_images_own_boxes():
    plan = crop_plan([(224, (0.14, 1.0), (3 / 4, 4 / 3))] * 2 + [(96, (0.05, 0.14), (3 / 4, 4 / 3))] * 6)
    rng = np.random.default_rng(1)
    dims = [tuple(int(v) for v in rng.integers(20, 600, 2)) for _ in range(64)] + [(1000, 10), (10, 1000)]
    got = sample_boxes_batch(torch.tensor([w for w, _ in dims]), torch.tensor([h for _, h in dims]), plan,
                             [image_generator(3, 1, i) for i in range(len(dims))])
    for i, (w, h) in enumerate(dims):
        assert torch.equal(got[i], sample_boxes(w, h, plan, image_generator(3, 1, i))), i


def test_tar_members_read_like_tarfile():
    """The direct ustar reader against the standard library: prefix names, empty members, pax records
    (handed to tarfile), and a damaged header checksum or a member cut short (errors, not bad bytes)."""
    def tar(members, fmt=tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    long_dir = "d" * 120 + "/sub"
    cases = [tar([("000000001.jpg", b"\xff\xd8" + bytes(range(256)) * 5), ("000000001.cls", b"3"),
                  ("000000001.json", b"{}")]),
             tar([(f"{long_dir}/key7.jpg", b"x" * 512), (f"{long_dir}/key7.cls", b"")]),
             tar([("k\u00e9y.jpg", b"abc"), ("k\u00e9y.cls", b"1")], tarfile.PAX_FORMAT)]
    for blob in cases:
        assert tar_members(blob) == _members_by_tarfile(blob)
    assert tar_members(cases[1])[0] == "key7" and tar_members(cases[2])[0] == "k\u00e9y"
    bad = bytearray(cases[0])
    bad[5] ^= 1  # a name byte: the stored checksum no longer matches
    with pytest.raises(tarfile.TarError, match="checksum"):
        tar_members(bytes(bad))
    with pytest.raises(tarfile.TarError, match="runs past"):
        tar_members(cases[0][:700])


def test_eval_view_is_torchvision_resize_then_centre_crop():
    """Resize(73) + CenterCrop(64): exact (<= 1 grey level) without DCT reduction, close with it."""
    for (w, h), exact in [((130, 100), True), ((400, 300), False)]:
        data = _jpeg(w, h)
        ref = TF.center_crop(TF.resize(_full(data), 73, antialias=True), [64, 64])
        d = (decode_eval(data, 64).float() - ref.float()).abs()
        assert d.max() <= 1 if exact else d.mean() < 2.0, (w, h, d.max(), d.mean())


def test_eval_resize_option_sets_the_shorter_side_before_the_centre_crop(packed):
    """data.options.eval_resize = size keeps the whole shorter side (the in-memory pack's eval view);
    a value below size is one line."""
    from ssl_aug.data.shard_eval import load_shard_folder

    dst, _ = packed
    ds = load_shard_folder("train", dst, size=32, eval_resize=32)
    index = read_index(dst)
    key, data, *_ = next(iter_rows(index.path(0), index.starts[:1], index.ends[:1]))
    ref = TF.center_crop(TF.resize(_full(data), 32, antialias=True), [32, 32])
    assert (ds.images[0].float() - ref.float()).abs().mean() < 2.0
    default = load_shard_folder("train", dst, size=32)
    assert not torch.equal(default.images.decode(), ds.images.decode())  # default: resize to 37, then crop 32
    with pytest.raises(SslAugError, match="eval_resize = 16 is not allowed.*>= data.options.size"):
        load_shard_folder("train", dst, size=32, eval_resize=16)


def test_a_truncated_or_damaged_jpeg_raises_in_both_decoders():
    """The full-scale path (torchvision's decoder) and the reduced-DCT path (PIL) both refuse a JPEG cut
    short, so the stream counts and replaces it instead of training on a half-grey image."""
    data = _jpeg(300, 200)
    plan = crop_plan([(64, (0.5, 1.0), (3 / 4, 4 / 3))])
    for sizes, cut in [([64], data[: len(data) // 2]), ([16], data[: len(data) // 2]), ([64], b"\0" * 16 + data[16:])]:
        boxes = sample_boxes(300, 200, plan, image_generator(0, 0, 0))
        with pytest.raises(Exception):
            decode_crops(cut, boxes, sizes)
