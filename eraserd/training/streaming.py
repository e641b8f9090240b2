"""A cluster's training images, read where it trains: straight from the store's object files
into the one padded buffer the retune engine reads (``training.engine.PackImages``).

A ``ClusterSource`` names its samples by key, not by pixels: it is a few bytes per sample to
hand to a worker, and the worker decodes each image into its place in the buffer. Neither the
parent nor the worker stacks, concatenates or pads a copy, so a retrain's memory grows with
its cluster by the uint8 images alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.images import canonical_view
from .engine import ClusterData, PackImages


@dataclass(frozen=True)
class ClusterSource:
    """Where a cluster's samples are: keys of the store's object files, in sample-id order."""

    objects: str
    """The store's ``objects/`` directory (workers on this machine read it directly)."""
    keys: tuple[str, ...]
    labels: tuple[int, ...]
    seed: int
    size: int
    """The canonical view's side (``backbone.image_size``)."""

    def view(self, i: int) -> torch.Tensor:
        return canonical_view((Path(self.objects) / self.keys[i]).read_bytes(), self.size)

    def load(self) -> ClusterData:
        """The cluster in memory, unpadded: for a backend that ships images elsewhere (Ray)."""
        images = torch.zeros(len(self.keys), 3, self.size, self.size, dtype=torch.uint8)
        for i in range(len(self.keys)):
            images[i] = self.view(i)
        return ClusterData(images, torch.tensor(self.labels, dtype=torch.int64), self.seed)


def read_pack(sources: list[ClusterSource], pad: int) -> PackImages:
    """Decode every source's images into one zero-bordered buffer, one image at a time."""
    if not sources:
        raise ValueError("a pack needs at least one cluster")
    size = sources[0].size
    if any(s.size != size for s in sources):
        raise ValueError("every cluster of a pack has the same view size")
    total = sum(len(s.keys) for s in sources)
    padded = torch.zeros(total, 3, size + 2 * pad, size + 2 * pad, dtype=torch.uint8)
    row = 0
    for s in sources:
        for i in range(len(s.keys)):
            padded[row, :, pad : pad + size, pad : pad + size] = s.view(i)
            row += 1
    labels = torch.tensor([label for s in sources for label in s.labels], dtype=torch.int64)
    return PackImages(
        padded, labels, tuple(len(s.keys) for s in sources), tuple(s.seed for s in sources)
    )
