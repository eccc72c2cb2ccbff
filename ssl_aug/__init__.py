"""ssl_aug: self-supervised contrastive learning where augmentation is the experiment.

Flow (imports only go forward): data -> augment -> models/losses -> methods -> train -> evaluation
-> ablation / export. Heavy sub-modules are imported lazily so `import ssl_aug` stays cheap.
"""

from ssl_aug._version import __version__

__all__ = ["__version__", "load_dataset", "load_encoder"]


def __getattr__(name):
    if name == "load_dataset":
        from ssl_aug.data import load_dataset

        return load_dataset
    if name == "load_encoder":
        from ssl_aug.export import load_encoder

        return load_encoder
    raise AttributeError(f"module 'ssl_aug' has no attribute {name!r}")
