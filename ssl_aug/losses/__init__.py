"""Self-supervised losses as pure functions, one file per family (shapes in each docstring).

ntxent: SimCLR's NT-Xent (two-view, multi-view, per image); swav: Sinkhorn-Knopp and swapped prediction;
byol: BYOL's symmetrised normalised-MSE. modules: the same losses as nn.Module objects (NTXentLoss, SwaVLoss,
SinkhornKnopp, BYOLLoss, IMixNTXentLoss).
"""

from ssl_aug.losses.ntxent import nt_xent, nt_xent_multiview, nt_xent_per_sample
from ssl_aug.losses.swav import sinkhorn, swav_loss
from ssl_aug.losses.byol import byol_loss
from ssl_aug.losses.imix import imix_byol_loss, imix_nt_xent
from ssl_aug.losses.modules import BYOLLoss, IMixNTXentLoss, NTXentLoss, SinkhornKnopp, SwaVLoss

__all__ = ["nt_xent", "nt_xent_multiview", "nt_xent_per_sample", "sinkhorn", "swav_loss", "byol_loss",
           "imix_nt_xent", "imix_byol_loss", "NTXentLoss", "SwaVLoss", "SinkhornKnopp", "BYOLLoss",
           "IMixNTXentLoss"]
