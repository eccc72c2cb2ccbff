"""Export in parts: the checkpoint is read on the CPU keeping only what export needs (issue 16), the
encoder refuses float input outside [0, 1], and what is exported follows the
method contract (state_prefixes), not the method's name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_aug.checkpoint import atomic_save
from ssl_aug.config import config_from_dict
from ssl_aug.errors import SslAugError
from ssl_aug.export import Encoder, encoder_from_checkpoint, export_encoder, load_encoder, load_head
from ssl_aug.export import writer
from ssl_aug.methods import METHODS, build_method
from ssl_aug.models import build_backbone

SMALL = {"widths": [4, 8]}


def _run(tmp_path, method="simclr", **method_kw):
    """A small_cnn run with optimizer state in its checkpoint."""
    pytest.importorskip("ssl_aug.models.small_cnn")
    torch.manual_seed(0)
    model = build_method(method, build_backbone("small_cnn", **SMALL), **method_kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # momentum buffers: real optimizer state
    recipe = {"model": {"backbone": "small_cnn", "backbone_args": SMALL}, "method": {"name": method, **method_kw},
              "augment": {"size": 16}, "data": {"name": "embedded"}}
    ckpt = {"format": "ssl_aug.checkpoint", "version": 1, "config": config_from_dict(recipe).to_dict(),
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": {}, "rng": {"cpu": torch.get_rng_state()},
            "step": 3, "epoch": 1, "metrics": []}
    atomic_save(ckpt, tmp_path / "run" / "checkpoints" / "last.pt")
    return tmp_path / "run", model.eval()


def test_checkpoint_read_on_cpu_and_training_state_dropped(tmp_path, monkeypatch):
    run, _ = _run(tmp_path, proj_hidden_dim=16, proj_dim=8)
    seen = []
    real = writer.load_checkpoint

    def spy(path, map_location="cpu"):
        seen.append(map_location)
        return real(path, map_location=map_location)

    monkeypatch.setattr(writer, "load_checkpoint", spy)
    kept = writer.read_training_checkpoint(run / "checkpoints" / "last.pt")
    assert seen == ["cpu"]
    assert set(kept) <= set(writer.KEEP_KEYS) and "optimizer" not in kept and "rng" not in kept
    backbone, _ = encoder_from_checkpoint(run, device="cpu")  # the public path goes through it as well
    export_encoder(run, tmp_path / "out")
    assert seen == ["cpu", "cpu", "cpu"]
    assert next(backbone.parameters()).device.type == "cpu"


def test_export_follows_the_method_contract_not_its_name(tmp_path, monkeypatch):
    """A method that declares other exported/head modules gets exactly those exported."""
    run, model = _run(tmp_path, proj_hidden_dim=16, proj_dim=8)
    cls = METHODS["simclr"]
    monkeypatch.setattr(cls, "heads", ())  # declares no head: --with-head has nothing to write
    with pytest.raises(SslAugError, match="no head weights"):
        export_encoder(run, tmp_path / "none", with_head=True)
    monkeypatch.setattr(cls, "heads", ("projector",))
    head = load_head(export_encoder(run, tmp_path / "head", with_head=True))
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("projector.")}
    assert head.keys() == expected.keys() and all(torch.equal(head[k], v) for k, v in expected.items())


def _encoder():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Encoder(backbone, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 4).eval()


def test_float_input_outside_unit_range_is_refused():
    encoder = _encoder()
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images.float() / 255), encoder(images))
        encoder(torch.full((1, 3, 8, 8), 1.005))  # resampling overshoot within the tolerance is accepted
        for bad in (images.float(), (images.float() / 255 - 0.5) / 0.25):  # 0-255 floats, normalised images
            with pytest.raises(Exception, match=r"\[0, 1\]"):
                encoder(bad)


def test_loaded_encoder_refuses_255_floats(tmp_path):
    run, _ = _run(tmp_path, proj_hidden_dim=16, proj_dim=8)
    encoder = load_encoder(export_encoder(run, tmp_path / "out"))
    with pytest.raises(SslAugError, match="divide 0-255 floats by 255"):
        encoder(torch.full((1, 3, 16, 16), 200.0))
