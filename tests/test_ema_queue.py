"""The shared EMA helper (exact update, frozen copies) and the per-rank embedding queue."""

import pytest
import torch
import torch.nn as nn

from ssl_aug.errors import SslAugError
from ssl_aug.methods.ema import cosine_momentum, ema_update_, frozen_copy
from ssl_aug.methods.queue import EmbeddingQueue


def test_ema_update_is_exact_and_reads_the_momentum_it_is_given():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    for m in (0.9, 0.5):  # the value passed at each call is the one used
        ema_update_(target, online, m)
        for b, t, o in zip(before, target.parameters(), online.parameters()):
            expected = [m * float(x) + (1 - m) * float(y) for x, y in zip(b.flatten(), o.flatten())]
            assert torch.allclose(t.flatten().double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
        before = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 1.0)
    assert all(torch.equal(b, t) for b, t in zip(before, target.parameters()))
    ema_update_(target, online, 0.0)
    assert all(torch.equal(o, t) for o, t in zip(online.parameters(), target.parameters()))
    with pytest.raises(ValueError, match="same architecture"):
        ema_update_(target, nn.Linear(4, 3), 0.5)


def test_cosine_momentum_runs_from_base_to_final():
    assert cosine_momentum(0, 10, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_momentum(5, 10, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_momentum(10, 10, 0.99, 1.0) == pytest.approx(1.0)


def test_queue_is_a_fifo_ring_of_unit_rows():
    torch.manual_seed(0)
    q = EmbeddingQueue(5, 3)
    assert q.queue.shape == (5, 3)
    assert torch.allclose(q.queue.norm(dim=1), torch.ones(5))
    a, b = torch.randn(3, 3), torch.randn(3, 3)
    q.push_(a)
    q.push_(b)  # wraps: rows 3, 4 then 0
    unit = torch.nn.functional.normalize
    assert torch.allclose(q.queue[3:], unit(b, dim=1)[:2])
    assert torch.allclose(q.queue[0], unit(b, dim=1)[2])
    assert torch.allclose(q.queue[1:3], unit(a, dim=1)[1:])
    assert int(q.pointer) == 1
    with pytest.raises(SslAugError, match="queue_length=5 is not allowed with 6 images"):
        q.push_(torch.randn(6, 3))
    with pytest.raises(SslAugError, match="support_size=0 is not allowed"):
        EmbeddingQueue(0, 3, name="support_size")
