"""Online linear probe: learns, leaves SSL training untouched, resumes exactly, refuses unlabelled data."""

import json

import pytest
import torch
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.online_linear import OnlineLinearProbe


def test_probe_learns_separable_features_and_scores_before_updating():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    centres = torch.randn(4, 8, generator=g) * 3
    feats = centres[labels] + 0.3 * torch.randn(400, 8, generator=g)
    backbone = nn.Identity()
    probe = OnlineLinearProbe(labels, 4, lr=0.05)
    accs = []
    for epoch in range(3):
        for i in range(0, 400, 50):
            idx = torch.arange(i, i + 50)
            probe.update(backbone, feats[idx], idx)
        accs.append(probe.end_epoch()["online_linear_top1"])
    assert accs[0] < accs[-1] and accs[-1] > 0.95


def test_unlabelled_images_are_skipped_and_all_unlabelled_is_an_error():
    labels = torch.tensor([0, 1, -1, -1])
    probe = OnlineLinearProbe(labels, 2)
    probe.update(nn.Identity(), torch.randn(4, 3), torch.arange(4))
    assert probe.counts[1].item() == 2  # only the two labelled images were scored
    with pytest.raises(SslAugError, match="online_linear"):
        OnlineLinearProbe(torch.full((5,), -1), 2)


def test_trainer_hook_logs_accuracy_leaves_ssl_untouched_and_resumes(tmp_path):
    pytest.importorskip("ssl_aug.models.small_cnn")
    from trainer_fixtures import StopAfter, tiny_config, tiny_data

    from ssl_aug.train import Trainer

    data = tiny_data()
    plain = Trainer(tiny_config(tmp_path / "plain"), progress=False, train_data=data)
    plain.fit()
    probed = Trainer(tiny_config(tmp_path / "a"), progress=False, train_data=data,
                     hooks=[OnlineLinearProbe(data.labels, 4)])
    probed.fit()
    for key, value in plain.method.state_dict().items():  # the probe never changes the SSL model
        assert torch.equal(value, probed.method.state_dict()[key]), key
    epochs = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["type"] == "epoch"]
    assert len(epochs) == 3 and all(0 <= r["online_linear_top1"] <= 1 for r in epochs)

    stopped = StopAfter(tiny_config(tmp_path / "b"), progress=False, train_data=data,
                        hooks=[OnlineLinearProbe(data.labels, 4)])
    stopped.limit = 5
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    resumed = Trainer(tiny_config(tmp_path / "b"), progress=False, train_data=data,
                      hooks=[OnlineLinearProbe(data.labels, 4)])
    resumed.fit(resume=True)
    again = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "epoch"]
    assert [r["online_linear_top1"] for r in again] == [r["online_linear_top1"] for r in epochs]
