"""Every built-in backbone exports to files that load without ssl_aug: model.safetensors + model.py
(a fresh interpreter in which `import ssl_aug` fails), torch.export, and ONNX through onnxruntime
(within 1e-4 of the original); timm backbones also load through timm's pretrained_cfg."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssl_aug.checkpoint import atomic_save
from ssl_aug.config import config_from_dict
from ssl_aug.export import export_encoder, load_encoder
from ssl_aug.methods import build_method
from ssl_aug.models import BACKBONES, build_backbone

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
SIMCLR = {"proj_hidden_dim": 16, "proj_dim": 8}
NO_SSL_AUG = """
import importlib.util, json, sys
sys.modules["ssl_aug"] = None  # an installed copy must not be reachable either
try:
    import ssl_aug
except ImportError:
    pass
else:
    raise SystemExit("ssl_aug was importable")
import numpy as np, torch
spec = importlib.util.spec_from_file_location("model", "model.py")
model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model)
encoder = model.load()
images = torch.from_numpy(np.load("images.npy"))
with torch.no_grad():
    np.save("features_plain.npy", encoder(images).numpy())
    program = torch.export.load("encoder.pt2").module()
    np.save("features_pt2.npy", program(images.float() / 255.0).numpy())
print(json.dumps(sorted(m for m, v in sys.modules.items() if m.startswith("ssl_aug") and v is not None)))
"""


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _run(root, arch, **backbone_args):
    """A run directory holding one SimCLR checkpoint of `arch` (BN statistics made non-trivial)."""
    torch.manual_seed(0)
    backbone = build_backbone(arch, **backbone_args)
    _randomise_bn(backbone)
    method = build_method("simclr", backbone, **SIMCLR)
    recipe = {"model": {"backbone": arch, "backbone_args": backbone_args}, "method": {"name": "simclr", **SIMCLR},
              "augment": {"mean": MEAN, "std": STD, "size": 32}}
    ckpt = {"format": "ssl_aug.checkpoint", "version": 1, "config": config_from_dict(recipe).to_dict(),
            "model": method.state_dict(), "step": 1, "epoch": 1}
    atomic_save(ckpt, root / "run" / "checkpoints" / "last.pt")
    return root / "run", backbone.eval()


def _reference(backbone, images):
    x = (images.float() / 255.0 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return backbone(x).numpy()


SLOW = pytest.mark.slow  # ~20-40 s each on 2 loaded cores (export + a fresh interpreter + ONNX)
CASES = [pytest.param("small_cnn", {"widths": [8, 16]}, id="small_cnn"),
         pytest.param("timm:test_resnet", {}, id="timm", marks=SLOW),
         pytest.param("cifar_resnet18", {}, id="cifar_resnet18", marks=SLOW),
         pytest.param("resnet18", {}, id="resnet18", marks=SLOW),
         pytest.param("resnet50", {}, id="resnet50", marks=SLOW),
         pytest.param("torchvision:mobilenet_v3_small", {}, id="torchvision", marks=SLOW)]


def test_cases_cover_every_registered_backbone():
    assert set(BACKBONES) <= {case.values[0] for case in CASES}


@pytest.mark.parametrize("arch,args", CASES)
def test_export_loads_without_ssl_aug(tmp_path, arch, args):
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    ort = pytest.importorskip("onnxruntime", reason="ONNX parity needs the onnx extra")
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra")
    run, backbone = _run(tmp_path, arch, **args)
    out = export_encoder(run, tmp_path / "export", onnx=True)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    expected = _reference(backbone, images)
    np.save(out / "images.npy", images.numpy())

    done = subprocess.run([sys.executable, "-I", "-c", NO_SSL_AUG], cwd=out, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # nothing of ssl_aug was imported
    np.testing.assert_allclose(np.load(out / "features_plain.npy"), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.load(out / "features_pt2.npy"), expected, atol=1e-4, rtol=1e-4)

    session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"images": images.numpy().astype(np.float32) / 255.0})[0]
    assert got.shape == expected.shape
    # the same bound as the torch paths: ONNX Runtime's ResNet-50 kernels sum in another order (up to 1.5e-4
    # absolute on features of order 1)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)

    encoder = load_encoder(out)  # ssl_aug's own loader reads the safetensors weights
    np.testing.assert_allclose(encoder(images).detach().numpy(), expected, atol=1e-4, rtol=1e-4)
    if arch.startswith("timm:"):
        import timm

        model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert model.pretrained_cfg["mean"] == MEAN and model.num_classes == 0
        np.testing.assert_allclose(_reference(model, images), expected, atol=1e-4, rtol=1e-4)


def test_torchvision_state_dict_only_for_resnets(tmp_path):
    run, _ = _run(tmp_path, "small_cnn", widths=[8, 16])
    meta = json.loads((export_encoder(run, tmp_path / "export") / "encoder.json").read_text())
    assert meta["torchvision"] is None
    assert set(meta["files"]) == {"model.safetensors", "model.py", "config.json", "encoder.pt2"}
    assert not (tmp_path / "export" / "backbone.pt").exists()


def test_cli_onnx_flag_without_the_extra_is_one_line(tmp_path, monkeypatch, capsys):
    from ssl_aug.cli import main as cli_main

    run, _ = _run(tmp_path, "small_cnn", widths=[8, 16])
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the onnx extra were not installed
    assert cli_main(["export", str(run), "--out", str(tmp_path / "export"), "--onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssl-aug: error: ONNX export needs onnx") and "ssl_aug[onnx]" in err and "\n" not in err
    assert not (tmp_path / "export" / "encoder.json").exists()  # nothing half-written looks complete
