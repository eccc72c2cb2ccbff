"""Group DRO losses against plain-loop references (Sagawa et al. 2019, online form), the class-conditional
(CLAMP) variant, the consistency loss, and one-line errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError
from ssl_aug.losses.group_dro import (GroupDRO, class_conditional_dro_loss, consistency_loss, group_dro_loss,
                                      update_group_weights)


def _ref_step(losses, groups, q, eta):
    """Plain Python: group means, q_g *= exp(eta * L_g) for present groups, normalise, loss = sum q_g L_g."""
    q = list(q)
    means = {}
    for g in sorted(set(groups)):
        vals = [l for l, gg in zip(losses, groups) if gg == g]
        means[g] = sum(vals) / len(vals)
    for g, m in means.items():
        q[g] = q[g] * math.exp(eta * m)
    z = sum(q)
    q = [v / z for v in q]
    return sum(q[g] * m for g, m in means.items()), q


def test_online_weights_and_loss_match_plain_loops_over_steps():
    rng = np.random.default_rng(0)
    G, eta = 5, 0.3
    q_ref = [1.0 / G] * G
    dro = GroupDRO(G, eta=eta).double()
    for step in range(6):
        n = 17
        losses = rng.gamma(2.0, 1.0, n).tolist()
        groups = rng.integers(0, G - 1, n).tolist()  # group G-1 never present: its weight only shrinks by renormalisation
        ref_loss, q_ref = _ref_step(losses, groups, q_ref, eta)
        loss = dro(torch.tensor(losses, dtype=torch.float64), torch.tensor(groups))
        assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
        assert np.allclose(dro.q.numpy(), q_ref, rtol=1e-12, atol=0)
    assert dro.q[G - 1] < 1.0 / G


def test_loss_gradient_flows_to_per_image_losses_with_weights_q_over_count():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 0, 1, 2])
    loss, q, mean = group_dro_loss(losses, groups, 3, torch.full((3,), 1 / 3, dtype=torch.float64), eta=1.0)
    loss.backward()
    expected = torch.stack([q[0] / 2, q[0] / 2, q[1], q[2]])
    assert torch.allclose(losses.grad, expected) and mean.tolist() == [1.5, 3.0, 4.0]


def test_large_eta_concentrates_on_the_worst_group_without_overflow():
    q = torch.full((3,), 1 / 3, dtype=torch.float64)
    q2 = update_group_weights(q, torch.tensor([1.0, 900.0, 2.0], dtype=torch.float64), torch.ones(3, dtype=torch.bool), 10.0)
    assert torch.isfinite(q2).all() and q2[1].item() == pytest.approx(1.0)


def test_class_conditional_matches_a_per_class_loop():
    rng = np.random.default_rng(1)
    C, G, eta, n = 3, 4, 0.5, 40
    losses = rng.gamma(2.0, 1.0, n)
    y = rng.integers(0, C, n)
    g = rng.integers(0, G, n)
    q0 = rng.dirichlet(np.ones(G), C)
    loss, q, _ = class_conditional_dro_loss(torch.tensor(losses), torch.tensor(y), torch.tensor(g), C, G,
                                            torch.tensor(q0), eta)
    per_class, q_ref = [], []
    for c in range(C):
        sel = y == c
        _, qc = _ref_step(losses[sel].tolist(), g[sel].tolist(), q0[c].tolist(), eta)
        q_ref.append(qc)
        present = sorted(set(g[sel].tolist()))
        w = np.array([qc[k] for k in present])
        w = w / w.sum()
        per_class.append(sum(wi * losses[sel & (g == k)].mean() for wi, k in zip(w, present)))
    assert np.allclose(q.numpy(), np.array(q_ref), rtol=1e-12)
    assert loss.item() == pytest.approx(float(np.mean(per_class)), rel=1e-12)


def test_eta_zero_is_importance_weighted_group_average():
    losses = torch.tensor([1.0, 1.0, 1.0, 5.0])
    loss, q, _ = group_dro_loss(losses, torch.tensor([0, 0, 0, 1]), 2, torch.tensor([0.5, 0.5]), eta=0.0)
    assert loss.item() == pytest.approx(3.0) and q.tolist() == [0.5, 0.5]


def test_consistency_is_jensen_shannon():
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    p, r = a.softmax(1), b.softmax(1)
    m = (p + r) / 2
    js = 0.5 * ((p * (p / m).log()).sum(1) + (r * (r / m).log()).sum(1))
    assert consistency_loss(a, b).item() == pytest.approx(js.mean().item(), rel=1e-5)
    assert consistency_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("call, word", [
    (lambda: group_dro_loss(torch.ones(3), None, 2, torch.ones(2) / 2), "needs group labels"),
    (lambda: group_dro_loss(torch.ones(3), torch.tensor([0, 1, 5]), 2, torch.ones(2) / 2), "allowed 0..1"),
    (lambda: group_dro_loss(torch.ones(3), torch.tensor([0, 1]), 2, torch.ones(2) / 2), "(N,)"),
    (lambda: group_dro_loss(torch.ones(2), torch.tensor([0, 1]), 2, torch.ones(2) / 2, eta=-1), "eta=-1"),
    (lambda: GroupDRO(2, class_conditional=True), "num_classes"),
    (lambda: GroupDRO(2, num_classes=2, class_conditional=True)(torch.ones(2), torch.tensor([0, 1])), "class labels"),
    (lambda: consistency_loss(torch.ones(2, 3), torch.ones(3, 3)), "one shape"),
])
def test_bad_input_one_line(call, word):
    with pytest.raises(SslAugError) as e:
        call()
    assert word in str(e.value) and "\n" not in str(e.value)


def test_erm_vs_dro_on_a_toy_shortcut():
    """A logistic model on (core, spurious) features: the DRO fit leans less on the spurious feature."""
    g = torch.Generator().manual_seed(0)
    n = 400
    y = (torch.rand(n, generator=g) < 0.5).long()
    agree = torch.rand(n, generator=g) < 0.95
    s = torch.where(agree, y, 1 - y).float()
    core = y.float() + 0.8 * torch.randn(n, generator=g)
    x = torch.stack([core, 3 * (s - 0.5)], 1)
    groups = (y * 2 + s.long())

    def fit(dro):
        torch.manual_seed(0)
        lin = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(lin.parameters(), lr=1.0)
        obj = GroupDRO(4, eta=0.1)
        for _ in range(120):
            per = F.cross_entropy(lin(x), y, reduction="none")
            loss = obj(per, groups) if dro else per.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        w = lin.weight.detach()
        return (w[1, 1] - w[0, 1]).abs() / (w[1, 0] - w[0, 0]).abs()  # spurious / core reliance

    assert fit(True) < 0.7 * fit(False)
