"""The `imagecorruptions` package (numpy / scikit-image / OpenCV, one image at a time), the reference the
batched corruptions are tested and benchmarked against. Version 1.1.2 predates numpy 2, scikit-image
0.19 and setuptools without pkg_resources; `load_reference` imports it with three small shims
(`np.float_`, `gaussian(multichannel=...)`, `pkg_resources.resource_filename`) that change no formula."""

from __future__ import annotations

import importlib
import os
import sys
import types

from ssl_aug.errors import SslAugError

EXTRA = "pip install 'ssl_aug[robustness]' (the imagecorruptions package)"


def load_reference():
    """The patched `imagecorruptions` module; SslAugError (one line naming the extra) when it is missing."""
    if importlib.util.find_spec("imagecorruptions") is None:
        raise SslAugError(f"the reference corruptions need the imagecorruptions package: {EXTRA}")
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package, name):
            return os.path.join(os.path.dirname(sys.modules[package].__file__), name)

        shim.resource_filename = resource_filename
        sys.modules["pkg_resources"] = shim
    import numpy as np

    module = importlib.import_module("imagecorruptions.corruptions")
    if not hasattr(np, "float_"):
        module.np = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")},
                                          float_=np.float64)
    from skimage.filters import gaussian

    def gaussian_compat(image, sigma=1, multichannel=None, **kw):
        if multichannel:
            kw["channel_axis"] = -1
        return gaussian(image, sigma=sigma, **kw)

    module.gaussian = gaussian_compat
    return importlib.import_module("imagecorruptions")
