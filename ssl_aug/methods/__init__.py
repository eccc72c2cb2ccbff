"""Self-supervised methods, built by name with :func:`build_method` (registry ``METHODS``).

Every method subclasses :class:`ssl_aug.methods.base.Method` (the contract the trainer, hard-view
sampling and export rely on). A new method is one file with ``@register_method("name")`` plus one
import line here.
"""

from ssl_aug.methods.base import (METHODS, Method, build_method, get_method, list_methods, method_options,
                                 register_method)
from ssl_aug.methods.simclr import SimCLR
from ssl_aug.methods.swav import SwAV
from ssl_aug.methods.byol import BYOL
from ssl_aug.methods.simsiam import SimSiam  # noqa: F401
from ssl_aug.methods.vicreg import VICReg  # noqa: F401
from ssl_aug.methods.barlow_twins import BarlowTwins  # noqa: F401
from ssl_aug.methods.moco_v2 import MoCoV2  # noqa: F401
from ssl_aug.methods.moco_v3 import MoCoV3  # noqa: F401
from ssl_aug.methods.nnclr import NNCLR  # noqa: F401
from ssl_aug.methods.dino import DINO  # noqa: F401

__all__ = ["METHODS", "Method", "build_method", "get_method", "list_methods", "method_options", "register_method", "SimCLR", "SwAV", "BYOL"]
