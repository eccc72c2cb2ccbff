"""Backbone registry, torchvision key layout, projection heads and prototypes."""

import importlib.util

import pytest
import torch
import torch.nn as nn
import torchvision

from ssl_aug.errors import SslAugError
from ssl_aug.models import BACKBONES, ProjectionHead, Prototypes, build_backbone


def test_registry_names_and_errors():
    assert {"cifar_resnet18", "resnet18", "resnet50", "small_cnn"} <= set(BACKBONES)
    with pytest.raises(SslAugError, match=r"unknown backbone 'vit'.*cifar_resnet18.*resnet50"):
        build_backbone("vit")
    with pytest.raises(SslAugError, match=r"unknown option\(s\) width.*zero_init_residual"):
        build_backbone("resnet18", width=2)


@pytest.mark.parametrize(
    "name,size,dim", [("cifar_resnet18", 32, 512), ("resnet18", 64, 512), ("resnet50", 64, 2048)]
)
def test_backbone_feature_shapes(name, size, dim):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    assert model.feature_dim == dim and isinstance(model.fc, nn.Identity)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim) and torch.isfinite(out).all()


def test_cifar_resnet18_stem_keeps_resolution():
    model = build_backbone("cifar_resnet18").eval()
    conv = model.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(model.maxpool, nn.Identity)
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(layer1=o.shape))
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(layer4=o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen["layer1"][-2:] == (32, 32) and seen["layer4"][-2:] == (4, 4)


def _torchvision_cifar_resnet18():
    tv = torchvision.models.resnet18(weights=None)
    tv.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tv.maxpool = nn.Identity()
    return tv


def test_cifar_resnet18_loads_into_torchvision_strictly():
    torch.manual_seed(0)
    ours = build_backbone("cifar_resnet18")
    ours(torch.randn(4, 3, 32, 32))  # move BN running stats away from their defaults
    ours.eval()
    state = ours.state_dict()
    tv = _torchvision_cifar_resnet18()
    result = tv.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    tv.fc = nn.Identity()
    tv.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tv.eval()(x), ours(x))


def test_resnet18_loads_into_stock_torchvision():
    state = build_backbone("resnet18").state_dict()
    result = torchvision.models.resnet18(weights=None).load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []


def test_zero_init_residual_is_passed_through():
    model = build_backbone("cifar_resnet18", zero_init_residual=True)
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0
    assert torch.count_nonzero(build_backbone("cifar_resnet18").layer1[0].bn2.weight) > 0


def test_small_cnn_when_available():
    if importlib.util.find_spec("ssl_aug.models.small_cnn") is None:
        pytest.skip("ssl_aug/models/small_cnn.py is not there yet (another helper's module)")
    model = build_backbone("small_cnn").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.feature_dim)


def test_projection_head_layouts():
    head = ProjectionHead(16, 32, 8)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None and head[3].bias is not None
    assert head(torch.randn(5, 16)).shape == (5, 8)
    three = ProjectionHead(16, 32, 8, num_layers=3, batch_norm=False)
    assert [type(m) for m in three] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert three[0].bias is not None
    one = ProjectionHead(16, 32, 8, num_layers=1)
    assert len(one) == 1 and one[0].in_features == 16 and one[0].out_features == 8
    with pytest.raises(SslAugError, match="num_layers=0"):
        ProjectionHead(16, 32, 8, num_layers=0)


def test_prototypes_normalised_and_linear():
    proto = Prototypes(6, 10)
    assert list(proto.state_dict()) == ["weight"] and proto.num_prototypes == 10
    assert torch.allclose(proto.weight.norm(dim=1), torch.ones(10), atol=1e-6)
    with torch.no_grad():
        proto.weight.mul_(torch.rand(10, 1) * 5 + 0.1)
    proto.normalize_()
    assert torch.allclose(proto.weight.norm(dim=1), torch.ones(10), atol=1e-6)
    z = torch.randn(3, 6)
    assert torch.allclose(proto(z), z @ proto.weight.t(), atol=1e-6)
    with pytest.raises(SslAugError, match="num_prototypes=0"):
        Prototypes(6, 0)


def test_prototypes_frozen_gradient_dropped():
    proto = Prototypes(4, 3, freeze_iters=2)
    for step, frozen in [(0, True), (1, True), (2, False)]:
        proto(torch.randn(2, 4)).sum().backward()
        proto.drop_grad_if_frozen(step)
        assert (proto.weight.grad is None) == frozen
        proto.weight.grad = None
