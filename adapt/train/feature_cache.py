"""Frozen features computed once: per training view, the backbone's (or the whole tower's) output.

In prompt tuning and linear probing (and LoRA unless its targets reach the backbone) Swin + FPN
neither train nor draw random numbers (eval mode: no DropBlock, no drop path), so their output
for one training view is the same at every visit. A few-shot training set is small and is visited
``copies x epochs`` times (1-shot: at least 72 visits per image), so the module keeps each view's
maps and skips the backbone when every image of a batch has been seen.

A view is what decides the backbone's input for one image: the image (``image_id``), its training
scale (``size``, the resized (h, w)), whether it was flipped (``hflip``, set by the training
transform) and the padded batch size (Swin, the FPN and the head see the zero padding, so the same
image padded to another batch size gives other features). Each image's maps do not depend on the
other images of its batch (no batch statistics anywhere in GLIP), so a batch of cached views is the
batch the backbone would have computed.

With ``cache_tower`` (``mode=linear_cached``) the fusion tower is put in eval mode too, so that
its output (the fused maps and token features, a function of the view and the fixed task prompt)
is cached instead and a step runs only the prediction layers and the loss. That is not the
official probe: its frozen tower keeps dropout on.

The cache is bounded (``feature_cache_mb``): least recently used views go first; a view larger
than the whole budget is not kept. Entries live on the device they were computed on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

ViewKey = tuple[Hashable, ...]


def view_keys(batch: Mapping[str, Any]) -> list[ViewKey] | None:
    """One key per image of a training batch, or None when a target lacks what identifies its view."""
    images: Tensor = batch["images"]
    padded = (int(images.shape[-2]), int(images.shape[-1]), str(images.dtype))
    keys: list[ViewKey] = []
    for target in batch["targets"]:
        if "image_id" not in target or "size" not in target:
            return None
        size = tuple(int(v) for v in target["size"])
        keys.append((int(target["image_id"]), size, bool(target.get("hflip", False)), padded))
    return keys


class FeatureCache:
    """An LRU map from view keys to per-image tensors (feature levels, optionally token features)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"feature_cache_mb must be >= 0, got {max_bytes / 2**20:g}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[ViewKey, tuple[Tensor, ...]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, keys: Sequence[ViewKey]) -> list[Tensor] | None:
        """The batch (each position stacked over the images), or None unless every view is cached."""
        if not all(k in self._entries for k in keys):
            self.misses += 1
            return None
        self.hits += 1
        for k in keys:
            self._entries.move_to_end(k)
        entries = [self._entries[k] for k in keys]
        # Concatenating the kept [1, ...] slices gives back the memory layout the features were
        # computed in (the tower's maps are channels-last on the CPU), so the layers after the
        # cache round exactly as they would without it.
        return [torch.cat(parts) for parts in zip(*entries, strict=True)]

    def put(self, keys: Sequence[ViewKey], batch: Sequence[Tensor]) -> None:
        """Keep every image's slice of ``batch`` (tensors whose dim 0 is the batch)."""
        for i, key in enumerate(keys):
            parts = tuple(t[i : i + 1].detach().clone() for t in batch)
            size = sum(p.numel() * p.element_size() for p in parts)
            if size > self.max_bytes:
                continue
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= sum(p.numel() * p.element_size() for p in old)
            while self._entries and self.bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= sum(p.numel() * p.element_size() for p in evicted)
            self._entries[key] = parts
            self.bytes += size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict[str, float]:
        return {"views": len(self), "mb": self.bytes / 2**20, "hits": self.hits, "misses": self.misses}
