"""The package version, in its own module so nothing needs to import ``ssl_aug/__init__`` for it."""

__version__ = "0.1.0"
