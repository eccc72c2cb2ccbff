"""Export trained encoders in torchvision format and load them back anywhere.

- `encoder`: the `Encoder` module (preprocessing + backbone) and the torchvision layout.
- `writer`: `export_encoder(run_or_checkpoint, out_dir, with_head=False)` and
  `encoder_from_checkpoint(path, device)` (file formats in its docstring).
- `reader`: `load_encoder(path, device)`, `load_head(path)`, `read_metadata(path)`.
The command line lives in ``ssl_aug/cli/export.py`` (`ssl-aug export`).
"""

from ssl_aug.export.encoder import Encoder, torchvision_backbone
from ssl_aug.export.reader import (BACKBONE_FILE, FORMAT, FORMAT_VERSION, HEAD_FILE, METADATA, SCRIPT_FILE,
                                   load_encoder, load_head, read_metadata, read_weights)
from ssl_aug.export.writer import encoder_from_checkpoint, export_encoder

__all__ = ["Encoder", "torchvision_backbone", "export_encoder", "encoder_from_checkpoint", "load_encoder",
           "load_head", "read_metadata", "read_weights", "FORMAT", "FORMAT_VERSION", "METADATA",
           "BACKBONE_FILE", "SCRIPT_FILE", "HEAD_FILE"]
