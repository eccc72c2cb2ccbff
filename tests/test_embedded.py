"""The embedded data set (deterministic, class = structure, colour independent of class) and SmallCNN."""

import numpy as np
import pytest
import torch

from ssl_aug.data import load_dataset
from ssl_aug.data.embedded import CLASSES, generate_embedded, load_embedded
from ssl_aug.errors import SslAugError
from ssl_aug.models.small_cnn import SmallCNN

N = 40  # images per class in most tests


@pytest.fixture(scope="module")
def small():
    """(train_x, train_y, test_x, test_y) at 20 px, 150 / 60 images per class."""
    return (*generate_embedded("train", 0, 20, 150), *generate_embedded("test", 0, 20, 60))


def _nearest_mean_accuracy(ftr, ytr, fte, yte):
    means = np.stack([ftr[ytr == c].mean(0) for c in range(len(CLASSES))])
    pred = ((fte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return float((pred == yte).mean())


def test_same_seed_is_bit_identical_other_seed_or_split_differs():
    a, ya = generate_embedded("train", 0, 20, N)
    b, yb = generate_embedded("train", 0, 20, N)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    c, yc = generate_embedded("train", 1, 20, N)
    t, _ = generate_embedded("test", 0, 20, N)
    assert np.array_equal(ya, yc)
    assert (a != c).mean() > 0.9 and (a != t).mean() > 0.9


def test_shapes_dtypes_balance_and_dataset():
    ds = load_embedded("test", cache=False, size=24, n_per_class=N)
    assert ds.images.shape == (10 * N, 3, 24, 24) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (10 * N,) and ds.labels.dtype == torch.int64
    assert ds.classes == CLASSES and len(set(CLASSES)) == 10 and ds.name == "embedded/test"
    assert ds.class_counts().tolist() == [N] * 10
    assert ds.images.is_contiguous()
    # the whole uint8 range is used: colours are drawn from the full RGB cube
    assert int(ds.images.min()) <= 5 and int(ds.images.max()) >= 250


def test_default_sizes_and_registry_dispatch(tmp_path):
    ds = load_dataset("embedded", "train", root=str(tmp_path))
    assert ds.images.shape == (5000, 3, 20, 20)
    assert ds.class_counts().tolist() == [500] * 10
    test = load_dataset("embedded", "test", root=str(tmp_path))
    assert test.images.shape == (2000, 3, 20, 20)


def test_cache_round_trip_and_corrupt_cache_regenerates(tmp_path):
    first = load_embedded("train", root=tmp_path, n_per_class=N)
    files = list((tmp_path / "embedded").glob("*.npz"))
    assert len(files) == 1 and "seed0" in files[0].name
    again = load_embedded("train", root=tmp_path, n_per_class=N)
    fresh = load_embedded("train", cache=False, n_per_class=N)
    assert torch.equal(first.images, again.images) and torch.equal(first.images, fresh.images)
    assert torch.equal(first.labels, again.labels)
    files[0].write_bytes(b"not an npz")
    repaired = load_embedded("train", root=tmp_path, n_per_class=N)
    assert torch.equal(repaired.images, fresh.images)
    with np.load(files[0]) as f:  # the broken file was replaced
        assert np.array_equal(f["x"], fresh.images.numpy())
    assert not list((tmp_path / "embedded").glob("*.tmp"))


def test_mean_colour_says_nothing_about_the_class(small):
    xtr, ytr, xte, yte = small
    ftr = xtr.reshape(len(xtr), 3, -1).mean(-1)
    fte = xte.reshape(len(xte), 3, -1).mean(-1)
    acc = _nearest_mean_accuracy(ftr, ytr, fte, yte)
    assert acc < 0.16, acc  # chance is 0.10; 600 test images -> sd ~0.012
    # the per-class mean colour is the same grey for every class
    means = np.stack([ftr[ytr == c].mean(0) for c in range(10)]) / 255
    assert np.abs(means - 0.5).max() < 0.06


def test_structure_carries_the_class(small):
    """An independent colour-free feature (magnitude spectrum of the standardised luma) separates the
    classes well above chance: the label lives in the structure."""
    xtr, ytr, xte, yte = small

    def spectrum(x):
        luma = (x.astype(np.float64) * np.array([0.299, 0.587, 0.114])[None, :, None, None]).sum(1)
        luma = (luma - luma.mean((1, 2), keepdims=True)) / (luma.std((1, 2), keepdims=True) + 1e-6)
        return np.abs(np.fft.fft2(luma)).reshape(len(x), -1)

    acc = _nearest_mean_accuracy(spectrum(xtr), ytr, spectrum(xte), yte)
    assert acc > 0.5, acc


def test_structure_survives_grayscale(small):
    xtr = small[0].astype(np.float64)
    luma = (xtr * np.array([0.299, 0.587, 0.114])[None, :, None, None]).sum(1)
    spread = np.percentile(luma.reshape(len(luma), -1), 95, axis=1) - np.percentile(
        luma.reshape(len(luma), -1), 5, axis=1)
    assert spread.min() > 0.25 * 255  # every image keeps a luma gap of >= 0.3 between its two parts


def test_each_class_has_two_colour_parts_and_horizontal_flip_keeps_the_class(small):
    xtr, ytr = small[0], small[1]
    # two colour parts: the spread across pixels is large in every image
    assert (xtr.reshape(len(xtr), 3, -1).std(-1).max(1) > 20).all()
    # classes are closed under horizontal flip (views flip): the flip-mirrored diagonal is in class too
    diag = xtr[ytr == CLASSES.index("diagonal")].astype(np.float64)
    luma = diag.mean(1)
    gu = np.diff(luma, axis=2)[:, :-1, :]
    gv = np.diff(luma, axis=1)[:, :, :-1]
    sign = np.sign((gu * gv).sum((1, 2)))
    assert (sign > 0).mean() > 0.3 and (sign < 0).mean() > 0.3


@pytest.mark.parametrize("bad, word", [({"split": "val"}, "'val'"), ({"size": 4}, "size=4"),
                                        ({"n_per_class": 0}, "n_per_class=0"), ({"size": 20.5}, "20.5")])
def test_bad_options_are_one_line_errors(bad, word):
    with pytest.raises(SslAugError) as err:
        load_embedded(**{"cache": False, **bad})
    msg = str(err.value)
    assert word in msg and "allowed" in msg and "\n" not in msg


@pytest.mark.parametrize("widths, size", [((32, 64, 128), 20), ((8, 16), 16), ((16, 32, 64, 128), 24), ((4,), 9)])
def test_small_cnn_shapes(widths, size):
    torch.manual_seed(0)
    net = SmallCNN(widths=widths)
    assert net.feature_dim == widths[-1]
    x = torch.randn(5, 3, size, size)
    out = net(x)
    assert out.shape == (5, widths[-1]) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():  # eval mode: images are independent (permuting the batch permutes features)
        perm = torch.randperm(5)
        torch.testing.assert_close(net(x[perm]), net(x)[perm], rtol=1e-5, atol=1e-5)


def test_small_cnn_bad_widths():
    for bad in ([], [0, 8], [8, "16"]):
        with pytest.raises(SslAugError) as err:
            SmallCNN(widths=bad)
        assert "widths" in str(err.value) and "\n" not in str(err.value)


def test_unwritable_cache_still_returns_the_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should go")
    ds = load_embedded("test", root=blocker, n_per_class=5)
    assert ds.images.shape == (50, 3, 20, 20)
    assert torch.equal(ds.images, load_embedded("test", cache=False, n_per_class=5).images)
