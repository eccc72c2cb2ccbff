"""A toy data source for the contract tests: one file plus one registration line."""

import torch

from ssl_aug.data import ImageDataset, Source, register_source


class ToyBlobs(Source):
    """Two classes of 16 px images: dark or bright blobs on noise (train 32, test 16 images)."""

    splits = ("train", "test")

    def load(self, split, root=None, download=False, n_per_class: int = 16):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = n_per_class if split == "train" else n_per_class // 2
        labels = torch.arange(2).repeat_interleave(n)
        images = torch.randint(0, 100, (2 * n, 3, 16, 16), generator=g)
        images[:, :, 4:12, 4:12] += (labels * 150).view(-1, 1, 1, 1)
        return ImageDataset(images.clamp(0, 255).to(torch.uint8), labels, ["dark", "bright"], f"toy/{split}")


register_source("toy_blobs", ToyBlobs())
