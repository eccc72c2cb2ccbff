"""Export trained encoders in formats any library loads, and load them back.

- `encoder`: the `Encoder` module (preprocessing + backbone; PIL, uint8 or float [0, 1] input) and the
  torchvision layout; `inputs`: `image_batch`, what the encoder accepts.
- `writer`: `export_encoder(run_or_checkpoint, out_dir, with_head=False, onnx=False)` and
  `encoder_from_checkpoint(path, device)` (file formats in its docstring); `standalone`: the plain
  ``model.py`` + ``config.json``; `onnx`: the ONNX writer.
- `reader`: `load_encoder(path, device)`, `load_head(path)`, `read_metadata(path)`.
The command line lives in ``ssl_aug/cli/export.py`` (`ssl-aug export`).
"""

from ssl_aug.export.encoder import Encoder, Normalized, torchvision_backbone
from ssl_aug.export.inputs import image_batch
from ssl_aug.export.reader import (BACKBONE_FILE, FORMAT, FORMAT_VERSION, HEAD_FILE, METADATA, PROGRAM_FILE,
                                   WEIGHTS_FILE, load_encoder, load_head, read_metadata, read_weights)
from ssl_aug.export.standalone import CONFIG_FILE, MODEL_FILE
from ssl_aug.export.writer import encoder_from_checkpoint, export_encoder

__all__ = ["Encoder", "Normalized", "image_batch", "torchvision_backbone", "export_encoder",
           "encoder_from_checkpoint", "load_encoder", "load_head", "read_metadata", "read_weights", "FORMAT",
           "FORMAT_VERSION", "METADATA", "WEIGHTS_FILE", "BACKBONE_FILE", "PROGRAM_FILE", "HEAD_FILE",
           "CONFIG_FILE", "MODEL_FILE"]
