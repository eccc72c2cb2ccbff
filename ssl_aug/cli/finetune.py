"""`ssl-aug finetune ENCODER [key=value ...]`: supervised fine-tuning with label mixing, TTA and calibration."""

from __future__ import annotations

from ssl_aug.cli._common import add_command


def run(args) -> int:
    from ssl_aug.cli.finetune_run import finetune_command  # imported on use: `ssl-aug --help` stays fast

    return finetune_command(args)


def register(sub) -> None:
    p = add_command(sub, "finetune", run,
                    help="fine-tune an encoder with labels (mixing, 1%%/10%% labels, TTA, ECE): "
                         "ssl-aug finetune ENCODER [key=value ...] [--spec SPEC]")
    p.add_argument("encoder", help="a run directory, a checkpoint .pt, an export directory, or random:BACKBONE")
    p.add_argument("overrides", nargs="*",
                   help="fine-tuning settings, e.g. mix=cutmix mix_alpha=1.0 label_fraction=0.1 epochs=30 "
                        "trainable=last_stage freeze_bn=true label_smoothing=0.1 tta=true")
    p.add_argument("--spec", default=None, help="a fine-tuning ablation TOML (cells x seeds), e.g. "
                                                 "ablate_finetune_mixing")
    p.add_argument("--cells", default=None, help="with --spec: only these cells, comma-separated (in this order)")
    p.add_argument("--seeds", type=int, default=0, help="seeds per cell (default: the spec's, else 1)")
    p.add_argument("--data", default=None, help="data set name (default: the one the encoder was trained on)")
    p.add_argument("--root", default=None, help="data root (default: the run's, then $SSL_AUG_DATA)")
    p.add_argument("--test-subset", type=int, default=0, help="use N test images (0 = all)")
    p.add_argument("--output-dir", default=None, help="where the runs go (default runs/finetune or the spec's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
