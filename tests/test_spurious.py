"""Embedded `spurious` option (nuisance patch = group), domain randomization knobs, shifted test domain,
group labels on ImageDataset and from a CSV."""

import hashlib

import numpy as np
import pytest
import torch

from ssl_aug.data import ImageDataset, load_dataset
from ssl_aug.data.embedded import PALETTE, PALETTE_NAMES, SHIFTED_DOMAIN, generate_embedded, load_embedded, patch_side
from ssl_aug.data.groups import check_nonempty, groups_for_files, read_group_csv, require_groups
from ssl_aug.errors import SslAugError

N = 40


def test_default_images_unchanged_by_the_new_options():
    # pinned before the spurious / randomization options existed (commit 63fb90f)
    x, y = generate_embedded("train", 0, 20, 30)
    assert hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest() == \
        "aeb82a4ecbc0e4df1108e24032b6487f802f8ddb58db5b796d345ec6520dd5e1"
    x, y, g = generate_embedded("test", 0, 20, 30, return_groups=True)
    assert g is None and hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest() == \
        "45d5c6264340195a8058772e8e37841d6bcb4ff67ba9a34c0be1197528fe6075"


def test_train_rate_and_test_independence():
    x, y, g = generate_embedded("train", 0, 20, 100, spurious=0.9, return_groups=True)
    for c in range(10):
        counts = np.bincount(g[y == c], minlength=10)
        assert counts[c] == 90 and (np.delete(counts, c) >= 1).all()  # the other 10 spread over 9 colours
    _, yt, gt = generate_embedded("test", 0, 20, 30, spurious=0.9, return_groups=True)
    table = np.zeros((10, 10), int)
    np.add.at(table, (yt, gt), 1)
    assert (table == 3).all()  # every (class, colour) cell equally often: colour independent of class


def test_patch_is_painted_in_the_group_colour_and_rest_matches_default():
    clean, _ = generate_embedded("train", 0, 20, N)
    x, y, g = generate_embedded("train", 0, 20, N, spurious=0.95, return_groups=True)
    k = patch_side(20)
    changed = (x != clean).any(1)  # (N, h, w)
    for i in range(0, len(x), 37):
        rows, cols = np.nonzero(changed[i])
        assert rows.max() - rows.min() < k and cols.max() - cols.min() < k  # only inside one k x k square
        # the k x k square in the palette colour exists
        hit = (x[i] == PALETTE[g[i]][:, None, None]).all(0)
        assert hit.sum() >= k * k


def test_dataset_carries_groups_and_cache_round_trip(tmp_path):
    a = load_embedded("train", root=tmp_path, n_per_class=N, spurious=0.8)
    b = load_embedded("train", root=tmp_path, n_per_class=N, spurious=0.8)
    assert torch.equal(a.groups, b.groups) and torch.equal(a.images, b.images)
    assert a.group_names == PALETTE_NAMES
    plain = load_embedded("train", root=tmp_path, n_per_class=N)
    assert plain.groups is None and len(list((tmp_path / "embedded").glob("*.npz"))) == 2
    sub = a.subset(torch.tensor([0, 5, 399]))
    assert sub.groups.tolist() == [a.groups[0].item(), a.groups[5].item(), a.groups[399].item()]
    via = load_dataset("embedded", "test", root=str(tmp_path), n_per_class=N, spurious=0.8)
    assert via.groups.shape == (10 * N,)


def test_randomization_keeps_structure_and_shift_changes_only_the_test_split():
    base, _ = generate_embedded("train", 0, 20, N)
    wide, _ = generate_embedded("train", 0, 20, N, hue=[0.0, 0.1], noise=[0.0, 0.05], lighting=0.3, texture=0.1)
    assert not np.array_equal(base, wide)
    # hue band [0, 0.1] turns: red-orange colours, so red >= green >= blue before noise/lighting on average
    narrow, _ = generate_embedded("train", 0, 20, N, hue=[0.0, 0.1])
    m = narrow.reshape(len(narrow), 3, -1).astype(float).mean(-1)
    assert (m[:, 0] >= m[:, 2] - 8).mean() > 0.97
    tr_plain, _ = generate_embedded("train", 0, 20, N, hue=[0.0, 0.1])
    tr_shift, _ = generate_embedded("train", 0, 20, N, hue=[0.0, 0.1], shift="default")
    assert np.array_equal(tr_plain, tr_shift)  # shift is for the test split only
    te_plain, _ = generate_embedded("test", 0, 20, N, hue=[0.0, 0.1])
    te_shift, _ = generate_embedded("test", 0, 20, N, hue=[0.0, 0.1], shift=SHIFTED_DOMAIN)
    assert (te_plain != te_shift).mean() > 0.5


@pytest.mark.parametrize("kw, word", [
    (dict(spurious=1.5), "spurious=1.5"), (dict(spurious="yes"), "spurious='yes'"),
    (dict(hue=[0.5, 0.1]), "hue="), (dict(noise=[0, 2]), "noise="), (dict(lighting=-1), "lighting=-1"),
    (dict(texure=0.1), "texure"), (dict(shift={"hue": [2, 1]}), "shift.hue"), (dict(shift=3), "shift=3"),
])
def test_bad_options_one_line(kw, word):
    with pytest.raises(SslAugError) as e:
        generate_embedded("train", 0, 20, 5, **kw)
    assert word in str(e.value) and "\n" not in str(e.value) and "allowed" in str(e.value)


def test_group_validation_and_csv(tmp_path):
    x = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(SslAugError, match="allowed 0..1"):
        ImageDataset(x, y, ["a"], "t", groups=torch.tensor([0, 1, 2]), group_names=["p", "q"])
    with pytest.raises(SslAugError, match=r"\(3,\) integer"):
        ImageDataset(x, y, ["a"], "t", groups=torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(SslAugError, match="needs group labels"):
        require_groups(None, "group DRO")
    with pytest.raises(SslAugError, match="group 'q' has no images in split 'test'"):
        check_nonempty(torch.tensor([0, 0, 2]), ["p", "q", "r"], "test")
    csv = tmp_path / "g.csv"
    csv.write_text("path,group\ncat/1.png,band\ncat/2.png,clean\ndog\\3.png,band\n")
    mapping = read_group_csv(csv)
    g, names = groups_for_files(["cat/1.png", "cat/2.png", "dog/3.png"], mapping)
    assert names == ["band", "clean"] and g.tolist() == [0, 1, 0]
    with pytest.raises(SslAugError, match="no group for 'dog/4.png'"):
        groups_for_files(["dog/4.png"], mapping)
    (tmp_path / "bad.csv").write_text("file,label\n")
    with pytest.raises(SslAugError, match="header 'path,group'"):
        read_group_csv(tmp_path / "bad.csv")


def test_nuisance_op_changes_the_group_not_the_structure():
    from ssl_aug.augment import MultiView
    from ssl_aug.augment.spec import ViewSpec

    x, y, g = generate_embedded("train", 0, 20, 6, spurious=1.0, return_groups=True)
    images = torch.from_numpy(x)
    spec = ViewSpec.from_dict({"size": 20, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "flip_p": 0.0,
                               "color_jitter": {"p": 0.0}, "grayscale_p": 0.0, "nuisance": {"p": 1.0}})
    mv = MultiView([spec], [1])
    params = mv.sample(images, torch.Generator().manual_seed(0))
    (view,) = mv.apply(images, params, normalize=False)
    to = params[0].nuisance_to
    src = images.float() / 255
    pal = torch.tensor(PALETTE, dtype=torch.float32) / 255
    k = patch_side(20)
    for i in range(len(x)):
        in_patch = (src[i] - pal[g[i]][:, None, None]).abs().amax(0) < 1e-6
        assert in_patch.sum() >= k * k
        assert torch.allclose(view[i][:, in_patch], pal[to[i]][:, None].expand(3, int(in_patch.sum())), atol=1e-6)
        assert torch.allclose(view[i][:, ~in_patch], src[i][:, ~in_patch], atol=1e-5)  # structure untouched
    # p = 0 (default): no parameters drawn, views identical to a spec without the op
    plain = ViewSpec.from_dict({"size": 20})
    assert "nuisance_on" not in MultiView([plain], [1]).sample(images, torch.Generator().manual_seed(0))[0].as_dict()
    with pytest.raises(SslAugError, match="nuisance.tol"):
        ViewSpec.from_dict({"size": 20, "nuisance": {"p": 0.5, "tol": 0.9}})


def test_image_folder_groups_from_csv(tmp_path):
    from PIL import Image

    tree = tmp_path / "tree"
    rows = ["path,group"]
    for cls in ("cat", "dog"):
        (tree / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 10), (40 * i, 80, 120)).save(tree / cls / f"{i}.png")
            rows.append(f"{cls}/{i}.png,{'band' if i == 0 else 'clean'}")
    (tree / "dog" / "broken.png").write_bytes(b"not an image")  # skipped by the pack: needs no row
    csv = tmp_path / "groups.csv"
    csv.write_text("\n".join(rows) + "\n")
    ds = load_dataset("imagefolder", "train", root=str(tree), size=8, cache=str(tmp_path / "c"), verbose=False,
                      groups=str(csv))
    files = next((tmp_path / "c").rglob("files.txt")).read_text().splitlines()  # the pack's (shuffled) order
    assert ds.group_names == ["band", "clean"]
    assert ds.groups.tolist() == [0 if f.endswith("/0.png") else 1 for f in files] and len(files) == 6
    csv.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(SslAugError, match="no group for 'dog/2.png'"):
        load_dataset("imagefolder", "train", root=str(tree), size=8, cache=str(tmp_path / "c"), verbose=False,
                     groups=str(csv))


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_nuisance_op_masked_engine_matches_cpu_engine(mode):
    from ssl_aug.augment import MultiView
    from ssl_aug.augment.spec import ViewSpec

    x, _ = generate_embedded("train", 0, 20, 4, spurious=1.0)
    images = torch.from_numpy(x)
    spec = ViewSpec.from_dict({"size": 16, "nuisance": {"p": 0.7}})
    params = MultiView([spec], [2], mode=mode).sample(images, torch.Generator().manual_seed(1))
    a = MultiView([spec], [2], mode=mode, masked=False).apply(images, params)
    b = MultiView([spec], [2], mode=mode, masked=True).apply(images, params)
    assert all(torch.allclose(u, v, atol=1e-4) for u, v in zip(a, b))
    assert params[0].nuisance_on.any() and not params[0].nuisance_on.all()
