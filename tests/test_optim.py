import math

import torch
from torch import nn

from ssl_aug.optim import LARS, build_optimizer, parameter_groups, warmup_cosine


def test_warmup_then_cosine():
    total, warm = 100, 10
    values = [warmup_cosine(s, total, warm) for s in range(total + 1)]
    assert values[0] == 0.1 and values[9] == 1.0
    assert values[10] == 1.0
    assert abs(values[55] - 0.5) < 1e-9  # half-way through the cosine
    assert values[100] == 0.0
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert abs(warmup_cosine(100, total, warm, min_ratio=0.1) - 0.1) < 1e-12


def test_no_weight_decay_on_bias_and_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 1e-4)
    assert {p.ndim for p in decay["params"]} == {4, 2}
    assert {p.ndim for p in no_decay["params"]} == {1}
    assert no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, "sgd", 0.1, 0.9, 1e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    w.grad = torch.tensor([0.6, 0.8])  # |g| = 1
    b.grad = torch.tensor([0.5])
    opt = LARS([{"params": [w], "weight_decay": 0.0}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.1, momentum=0.9, eta=0.02)
    opt.step()
    trust = 0.02 * 5 / 1
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * trust * torch.tensor([0.6, 0.8]))
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.1 * 0.5]))
    # second step uses momentum: buf = 0.9 * buf + g'
    w.grad = torch.tensor([0.6, 0.8])
    before = w.detach().clone()
    opt.step()
    w_norm = float(before.norm())
    g2 = 0.02 * w_norm * torch.tensor([0.6, 0.8])
    buf = 0.9 * trust * torch.tensor([0.6, 0.8]) + g2
    assert torch.allclose(w.detach(), before - 0.1 * buf, atol=1e-6)


def test_lars_weight_decay_is_inside_trust_ratio():
    w = nn.Parameter(torch.tensor([1.0, 0.0]))
    w.grad = torch.tensor([0.0, 1.0])
    opt = LARS([{"params": [w], "weight_decay": 0.5}], lr=1.0, momentum=0.0, eta=1.0)
    opt.step()
    g = torch.tensor([0.5, 1.0])
    expected = torch.tensor([1.0, 0.0]) - g * (1.0 / math.sqrt(1.25))
    assert torch.allclose(w.detach(), expected, atol=1e-6)


class _LoopLARS(torch.optim.Optimizer):
    """The per-parameter loop LARS had before it moved to torch._foreach_* (the reference)."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    grad = grad * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])


def test_foreach_lars_equals_the_per_parameter_loop():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 5))  # noqa: E731
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a[3].weight[0].zero_()  # a zero row (the norms stay positive)
        b[3].weight[0].zero_()
    ga, gb = parameter_groups(a, 1e-3), parameter_groups(b, 1e-3)
    fa, fb = LARS(ga, lr=0.3, momentum=0.9), _LoopLARS(gb, lr=0.3, momentum=0.9)
    x = torch.randn(6, 3, 8, 8)
    for step in range(4):
        for model, opt in ((a, fa), (b, fb)):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            if step == 1:
                model[0].bias.grad = None  # a parameter without a gradient this step
            if step == 2:
                model[3].bias.grad.zero_()  # zero gradient norm: trust ratio 1
            opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), n
        assert torch.allclose(fa.state[p]["momentum_buffer"], fb.state[q]["momentum_buffer"], rtol=0, atol=1e-6), n
