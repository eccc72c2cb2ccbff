"""Encoder export / load: safetensors, torchvision layout, torch.export, metadata, hashes, safe loading."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import ssl_aug
from ssl_aug.checkpoint import atomic_save
from ssl_aug.config import config_from_dict
from ssl_aug.errors import SslAugError
from ssl_aug.cli import main as cli_main
from ssl_aug.export import encoder_from_checkpoint, export_encoder, load_encoder, load_head, read_metadata
from ssl_aug.methods import build_method
from ssl_aug.models import build_backbone

MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2470, 0.2435, 0.2616]
SWAV = {"proj_hidden_dim": 32, "proj_dim": 16, "num_prototypes": 10, "queue_length": 64}  # small real head
EXECUTED = []  # filled by _Payload if a pickle ever runs code during loading


def _record(tag):
    EXECUTED.append(tag)
    return torch.zeros(1)


class _Payload:
    """A pickled custom object whose unpickling would call _record (arbitrary code execution)."""

    def __reduce__(self):
        return (_record, ("pickle code ran",))


class _Unscriptable(nn.Module):
    """A backbone TorchScript could not compile (a lambda attribute): torch.export takes it."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = lambda x: x.clamp_min(0.0)
        self.feature_dim = width

    def forward(self, x):
        return self.act(self.bn(self.conv(x))).mean((2, 3))


@pytest.fixture
def toy(monkeypatch):
    """Register the fast unscriptable toy backbone as "toy_unscriptable" for one test."""
    import ssl_aug.models

    monkeypatch.setitem(ssl_aug.models.BACKBONES, "toy_unscriptable", _Unscriptable)
    return "toy_unscriptable"


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN running statistics, so eval-mode features depend on them."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)


def _make_run(root, arch: str, augment=None, **backbone_args):
    """A run directory with checkpoints/last.pt in the trainer's format and an eval.json."""
    torch.manual_seed(0)
    backbone = build_backbone(arch, **backbone_args)
    _randomise_bn(backbone)
    method = build_method("swav", backbone, **SWAV)
    augment = {"mean": MEAN, "std": STD, "size": 32} if augment is None else augment
    recipe = {"model": {"backbone": arch, "backbone_args": backbone_args}, "method": {"name": "swav", **SWAV},
              "augment": augment,
              "data": {"name": "cifar10"}, "train": {"epochs": 3}}
    config = config_from_dict(recipe).to_dict()
    history = [{"type": "epoch", "epoch": 1, "step": 40, "loss": 5.1},  # the trainer's per-epoch records
               {"type": "epoch", "epoch": 2, "step": 80, "loss": 4.9, "knn_top1": 0.55},
               {"type": "epoch", "epoch": 3, "step": 120, "loss": torch.tensor(4.7), "knn_top1": 0.61}]
    ckpt = {"format": "ssl_aug.checkpoint", "version": 1, "config": config, "model": method.state_dict(),
            "optimizer": {}, "step": 120, "epoch": 3, "metrics": history}
    run = root / "run"
    atomic_save(ckpt, run / "checkpoints" / "last.pt")
    (run / "eval.json").write_text(json.dumps({"steps": 120, "knn_top1": 0.625, "knn_top5": 0.97}))
    return run, method.eval()


def _reference_features(backbone: nn.Module, images_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return backbone.eval()((images_uint8.float() / 255.0 - mean) / std)


def _images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    run, method = _make_run(root, "cifar_resnet18")
    out = export_encoder(run, root / "export", with_head=True)
    return run, method, out


@pytest.fixture(scope="module")
def loaded(exported):
    return load_encoder(exported[2])


def _copy_export(out, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


# ------------------------------------------------------------------------------ round trip
def test_export_load_identical_features_uint8_and_float(exported, loaded):
    _, method, out = exported
    encoder = loaded
    assert not encoder.training and encoder.feature_dim == 512
    assert read_metadata(out / "encoder.json") == read_metadata(out) == (out, encoder.metadata)
    assert ssl_aug.load_encoder is load_encoder
    assert encoder.metadata["architecture"] == "cifar_resnet18"
    assert encoder.mean == tuple(MEAN) and encoder.std == tuple(STD)
    images = _images()
    expected = _reference_features(method.backbone, images)
    with torch.no_grad():
        from_uint8 = encoder(images)
        from_float = encoder(images.float() / 255.0)
    assert from_uint8.shape == (4, 512)
    torch.testing.assert_close(from_uint8, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_float, expected, rtol=1e-5, atol=1e-5)


def test_files_and_metadata(exported):
    run, _, out = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == ["backbone.pt", "config.json", "encoder.json", "encoder.pt2", "head.safetensors", "model.py",
                     "model.safetensors"]  # no temp files left
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["format"] == "ssl_aug.encoder" and meta["format_version"] == 2
    assert meta["architecture"] == "cifar_resnet18" and meta["feature_dim"] == 512
    assert "3" in meta["stem"] and "Identity" in meta["stem"]
    assert meta["input"]["size"] == 32 and meta["dataset"] == "cifar10"
    assert meta["normalization"] == {"mean": MEAN, "std": STD}
    assert meta["epoch"] == 3 and meta["step"] == 120 and meta["recipe"]["train"]["epochs"] == 3
    assert meta["recipe"]["method"]["name"] == "swav" and meta["recipe"]["eval"]["knn_k"] == 200
    assert meta["eval"]["eval"]["knn_top1"] == 0.625
    last = {"type": "epoch", "epoch": 3, "step": 120, "loss": pytest.approx(4.7), "knn_top1": 0.61}
    assert meta["eval"]["last_epoch"] == last
    assert [r["knn_top1"] for r in meta["eval"]["knn_monitor"]] == [0.55, 0.61]
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["torchvision"] == torchvision.__version__
    for name in names:
        if name == "encoder.json":
            continue
        data = (out / name).read_bytes()
        assert meta["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_strict_load_into_torchvision_resnet18_with_cifar_stem(exported):
    _, method, out = exported
    state = torch.load(out / "backbone.pt", weights_only=True)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    result = model.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    model.fc = nn.Identity()
    model.load_state_dict(state, strict=True)
    images = _images(seed=3)
    expected = _reference_features(method.backbone, images)
    torch.testing.assert_close(_reference_features(model, images), expected, rtol=0, atol=0)


def test_exported_program_equals_eager(exported, loaded):
    _, _, out = exported
    program = torch.export.load(str(out / "encoder.pt2")).module()
    images = _images(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(program(images.float() / 255.0), loaded(images), rtol=1e-5, atol=1e-5)
        assert program(_images(n=7, seed=6).float() / 255.0).shape == (7, 512)  # the batch size is dynamic
    with pytest.raises(SslAugError, match="uint8"):
        loaded(images.to(torch.int32))


def test_exported_program_loads_without_ssl_aug(exported):
    _, _, out = exported
    code = ("import sys, warnings; sys.modules['ssl_aug'] = None; warnings.simplefilter('error'); "
            "import torch; m = torch.export.load(sys.argv[1]).module(); "
            "print(tuple(m(torch.zeros(2, 3, 32, 32)).shape))")
    done = subprocess.run([sys.executable, "-c", code, str(out / "encoder.pt2")], capture_output=True,
                          text=True, cwd=out, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(2, 512)"


def test_head_exported(exported):
    _, method, out = exported
    head = load_head(out)
    expected = {k: v for k, v in method.state_dict().items() if k.startswith(("projector.", "prototypes."))}
    assert "queue" in method.state_dict() and "prototypes.weight" in head  # SwAV's queue is training state
    assert head.keys() == expected.keys() and len(head) == 9
    for key, value in expected.items():
        assert torch.equal(head[key], value)


def test_checkpoint_file_cli_and_encoder_from_checkpoint(exported, tmp_path, capsys):
    run, method, _ = exported
    ckpt = run / "checkpoints" / "last.pt"
    assert cli_main(["export", str(ckpt), "--out", str(tmp_path / "cli")]) == 0
    assert "cifar_resnet18" in capsys.readouterr().out
    assert not (tmp_path / "cli" / "head.safetensors").exists()
    meta = json.loads((tmp_path / "cli" / "encoder.json").read_text())
    assert set(meta["files"]) == {"backbone.pt", "model.safetensors", "model.py", "config.json", "encoder.pt2"}
    assert meta["eval"]["eval"]["knn_top1"] == 0.625  # run dir found from checkpoints/last.pt
    backbone, config = encoder_from_checkpoint(run)
    assert not backbone.training and config["model"]["backbone"] == "cifar_resnet18"
    images = _images(seed=7)
    expected = _reference_features(method.backbone, images)
    torch.testing.assert_close(_reference_features(backbone, images), expected, rtol=0, atol=0)


def test_eval_json_of_another_step_not_attached(tmp_path, toy):
    run, _ = _make_run(tmp_path, toy)
    older = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    older["step"] = 60
    atomic_save(older, run / "checkpoints" / "step_00000060.pt")
    out = export_encoder(run / "checkpoints" / "step_00000060.pt", tmp_path / "a")
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["step"] == 60 and "eval" not in meta["eval"]  # eval.json describes step 120, not 60
    meta = json.loads((export_encoder(run, tmp_path / "b") / "encoder.json").read_text())
    assert meta["step"] == 120 and meta["eval"]["eval"]["knn_top1"] == 0.625


def test_imagenet_stem_resnet18_strict_torchvision(tmp_path):
    run, method = _make_run(tmp_path, "resnet18")
    out = export_encoder(run, tmp_path / "export")
    model = torchvision.models.resnet18(num_classes=1000)
    result = model.load_state_dict(torch.load(out / "backbone.pt", weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    model.fc = nn.Identity()
    images = _images(n=2, size=64)
    expected = _reference_features(method.backbone, images)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(out)(images), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_reference_features(model, images), expected, rtol=0, atol=0)


def test_recipe_without_mean_std_uses_viewspec_defaults(tmp_path, toy):
    from ssl_aug.augment import ViewSpec

    run, method = _make_run(tmp_path, toy, augment={"size": 24})
    out = export_encoder(run, tmp_path / "export")
    meta = json.loads((out / "encoder.json").read_text())
    spec = ViewSpec()
    assert meta["normalization"] == {"mean": list(spec.mean), "std": list(spec.std)}
    assert meta["input"]["size"] == 24 and load_encoder(out).mean == spec.mean


def test_backbone_with_a_lambda_exports(tmp_path, toy):
    run, method = _make_run(tmp_path, toy, width=6)
    out = export_encoder(run, tmp_path / "export")
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["torchvision"] is None and meta["stem"] == "ssl_aug" and meta["backbone_args"] == {"width": 6}
    images = _images(seed=13)
    expected = _reference_features(method.backbone, images)
    assert expected.shape == (4, 6)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(out)(images), expected, rtol=1e-5, atol=1e-6)
        program = torch.export.load(str(out / "encoder.pt2")).module()
        torch.testing.assert_close(program(images.float() / 255.0), expected, rtol=1e-5, atol=1e-6)


def test_small_cnn_round_trip(tmp_path):
    try:
        build_backbone("small_cnn")
    except SslAugError as exc:
        pytest.skip(f"small_cnn backbone not available: {exc}")
    run, method = _make_run(tmp_path, "small_cnn", widths=[8, 16, 24])
    out = export_encoder(run, tmp_path / "export")
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["backbone_args"] == {"widths": [8, 16, 24]} and meta["feature_dim"] == 24
    assert meta["torchvision"] is None and meta["stem"] == "ssl_aug"
    images = _images(seed=11)
    expected = _reference_features(method.backbone, images)
    with torch.no_grad():
        encoder = load_encoder(out)
        assert encoder.feature_dim == 24
        torch.testing.assert_close(encoder(images), expected, rtol=1e-5, atol=1e-5)
        program = torch.export.load(str(out / "encoder.pt2")).module()
        torch.testing.assert_close(program(images.float() / 255.0), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- refusals
def test_tampered_weights_refused(exported, tmp_path):
    _, _, out = exported
    copy = _copy_export(out, tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(copy / "model.safetensors")
    state["conv1.weight"][0, 0, 0, 0] += 1.0
    save_file(state, copy / "model.safetensors")
    expected = json.loads((copy / "encoder.json").read_text())["files"]["model.safetensors"]["sha256"]
    actual = hashlib.sha256((copy / "model.safetensors").read_bytes()).hexdigest()
    with pytest.raises(SslAugError, match="model.safetensors") as info:
        load_encoder(copy)
    assert expected in str(info.value) and actual in str(info.value) and "\n" not in str(info.value)
    (copy / "model.safetensors").unlink()
    with pytest.raises(SslAugError, match="model.safetensors is missing"):
        load_encoder(copy)


def test_weights_only_refuses_pickled_code(exported, tmp_path):
    _, _, out = exported
    copy = _copy_export(out, tmp_path)
    state = torch.load(copy / "backbone.pt", weights_only=True)
    state["evil"] = _Payload()
    torch.save(state, copy / "backbone.pt")
    meta = json.loads((copy / "encoder.json").read_text())  # an attacker can update the hash too
    del meta["files"]["model.safetensors"]  # a format-1 export: backbone.pt is the weights file
    meta["files"]["backbone.pt"]["sha256"] = hashlib.sha256((copy / "backbone.pt").read_bytes()).hexdigest()
    (copy / "encoder.json").write_text(json.dumps(meta))
    EXECUTED.clear()
    with pytest.raises(SslAugError, match="weights_only"):
        load_encoder(copy)
    assert EXECUTED == []
    torch.load(copy / "backbone.pt", weights_only=False)  # the payload is live: a plain load runs it
    assert EXECUTED == ["pickle code ran"]


def test_directory_without_metadata_refused(tmp_path):
    (tmp_path / "backbone.pt").write_bytes(b"")
    with pytest.raises(SslAugError, match="has no encoder.json"):
        load_encoder(tmp_path)
    with pytest.raises(SslAugError, match="does not exist"):
        load_encoder(tmp_path / "nowhere")
    with pytest.raises(SslAugError, match="has no encoder.json"):
        load_encoder(tmp_path / "backbone.pt")  # a file outside an export directory


def test_newer_format_version_and_old_torch_refused(exported, tmp_path, monkeypatch):
    _, _, out = exported
    copy = _copy_export(out, tmp_path)
    meta = json.loads((copy / "encoder.json").read_text())
    meta["format_version"] = 3
    (copy / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(SslAugError, match="format_version 3"):
        load_encoder(copy)
    meta["format_version"] = 1
    del meta["files"]["model.safetensors"]  # a format-1 export: backbone.pt read with torch.load
    (copy / "encoder.json").write_text(json.dumps(meta))
    monkeypatch.setattr(torch, "__version__", "1.12.1")
    with pytest.raises(SslAugError, match="torch 1.12.1 is too old"):
        load_encoder(copy)
    assert load_encoder(out).feature_dim == 512  # safetensors needs no torch.load


def test_other_architecture_refused(exported, tmp_path):
    run, _, out = exported
    copy = _copy_export(out, tmp_path)
    meta = json.loads((copy / "encoder.json").read_text())
    meta["architecture"] = "resnet50"
    (copy / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(SslAugError, match="architecture mismatch.*layer1.0.conv3.weight"):
        load_encoder(copy)
    # a checkpoint whose recipe names another backbone than its weights
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["config"]["model"]["backbone"] = "resnet50"
    atomic_save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(SslAugError, match="not hold a 'resnet50' backbone.*missing layer1.0.conv3.weight"):
        export_encoder(tmp_path / "wrong.pt", tmp_path / "out")
    assert not (tmp_path / "out" / "encoder.json").exists()


def test_truncated_and_foreign_checkpoints_refused(exported, tmp_path):
    run, _, _ = exported
    data = (run / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SslAugError, match="truncated"):
        export_encoder(tmp_path / "truncated.pt", tmp_path / "out")
    with pytest.raises(SslAugError, match="truncated"):
        encoder_from_checkpoint(tmp_path / "truncated.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(SslAugError, match="not an ssl_aug checkpoint"):
        export_encoder(tmp_path / "plain.pt", tmp_path / "out")
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(SslAugError, match="no checkpoints/last.pt"):
        export_encoder(tmp_path / "emptyrun", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_encoder_input_checked(loaded):
    encoder = loaded
    with pytest.raises(SslAugError, match=r"\(N, 3, H, W\)"):
        encoder(torch.zeros(2, 32, 32))
    with pytest.raises(SslAugError, match="uint8"):
        encoder(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(SslAugError, match="PIL images, a tensor or a numpy array"):
        encoder("image.png")


def test_encoder_takes_pil_numpy_and_single_images(loaded):
    from PIL import Image

    images = _images(n=2, seed=21)
    with torch.no_grad():
        expected = loaded(images)
        hwc = images.permute(0, 2, 3, 1).numpy()
        pil = [Image.fromarray(a) for a in hwc]
        torch.testing.assert_close(loaded(pil), expected, rtol=1e-5, atol=1e-5)  # a list of PIL images
        torch.testing.assert_close(loaded(pil[1]), expected[1:], rtol=1e-5, atol=1e-5)  # one PIL image
        torch.testing.assert_close(loaded(hwc), expected, rtol=1e-5, atol=1e-5)  # numpy (N, H, W, 3)
        torch.testing.assert_close(loaded(images[0]), expected[:1], rtol=1e-5, atol=1e-5)  # (3, H, W)
        # a larger, non-square PIL image (grayscale) is resized (shorter side 32) and centre-cropped
        big = Image.fromarray(hwc[0]).resize((64, 64), Image.NEAREST).crop((0, 0, 64, 48)).convert("L")
        reference = big.convert("RGB").resize((43, 32), Image.BICUBIC).crop((5, 0, 37, 32))
        want = loaded(torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1))
        torch.testing.assert_close(loaded(big), want, rtol=1e-5, atol=1e-5)
