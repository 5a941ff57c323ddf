"""Image batches streamed from disk: a DataLoader whose persistent workers read (and, on the PIL
path, decode and crop) the files, an optional batched decoder in the main process, then
normalization on the device. Unreadable images are skipped and counted, never raised."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .decode import TensorDecoder

log = logging.getLogger(__name__)


def collate_samples(batch: list) -> tuple[Any, torch.Tensor, list[str], list[tuple[str, str]]]:
    """(payload, labels, paths, bad): payload is a stacked uint8 batch for decoded images or a
    list of byte tensors for ``raw_bytes``; ``bad`` lists (path, error) of skipped files."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[2], b[3]) for b in batch if b[0] is None]
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    items = [b[0] for b in good]
    payload: Any = items
    if items and items[0].dim() == 3:
        payload = torch.stack(items)
    elif not items:
        payload = torch.empty(0, dtype=torch.uint8)
    return payload, labels, [b[2] for b in good], bad


class EpochSampler(torch.utils.data.Sampler[int]):
    """Index order of epoch ``e`` depends only on (seed, e); optionally one rank's share.

    ``pad``: every rank gets the same number of indices, the last ones wrapping around (as
    DistributedSampler does), which training needs (DDP steps in lockstep). Evaluation does not:
    with ``pad=False`` the shares are disjoint and cover every index once, so metrics summed over
    ranks count each image exactly once."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.world_size > 1 and self.pad:   # wrap so every rank gets the same number of steps
            total = len(self) * self.world_size
            order = torch.cat([order, order[: total - self.n]])[self.rank::self.world_size]
        elif self.world_size > 1:
            order = order[self.rank::self.world_size]
        return iter(order.tolist())


@dataclass(frozen=True)
class Sampling:
    """Which images each epoch gives this rank, in what order: the :class:`EpochSampler`'s options.
    ``seed`` also seeds the workers' augmentation RNG; ``pad`` is for training (see EpochSampler)."""

    shuffle: bool
    seed: int
    rank: int = 0
    world_size: int = 1
    pad: bool = True


class StreamLoader:
    """Re-iterable ImageNet batches on ``device``: a DataLoader with persistent workers that
    read (and, on the PIL path, decode and crop) files, an optional batched ``TensorDecoder``
    in the main process, then uint8 -> float and normalization on the device.

    ``skipped`` counts images dropped because they could not be read (each occurrence);
    ``skipped_files`` maps each such path to its error, logged once per file."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,     # ImageFolderSamples or TarSamples
        batch_size: int,
        *,
        sampling: Sampling,
        drop_last: bool,
        workers: int,
        device: torch.device,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        decoder: TensorDecoder | None = None,
    ):
        self.device, self.decoder = torch.device(device), decoder
        self.sampler = EpochSampler(len(dataset), sampling.shuffle, sampling.seed, sampling.rank,
                                    sampling.world_size, pad=sampling.pad)
        drop_last = drop_last and len(self.sampler) >= batch_size
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            collate_fn=collate_samples, drop_last=drop_last,
            pin_memory=self.device.type == "cuda" and decoder is None,
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(sampling.seed),   # seeds the workers' augmentation RNG
        )
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.epoch = 0
        self.skipped = 0
        self.skipped_files: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _skip(self, path: str, err: str) -> None:
        self.skipped += 1
        if path not in self.skipped_files:
            self.skipped_files[path] = err
            log.warning("imagenet: skipped unreadable image %s (%s); %d skipped so far", path, err, self.skipped)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        for payload, y, paths, bad in self.loader:
            for path, err in bad:
                self._skip(path, err)
            if self.decoder is not None and len(y):
                payload, keep, errors = self.decoder(payload)
                for i, err in errors.items():
                    self._skip(paths[i], err)
                y = y[keep]
            if len(y) == 0:
                continue
            x = payload.to(self.device, non_blocking=True).float().mul_(1.0 / 255.0)
            yield (x - self.mean) / self.std, y.to(self.device, non_blocking=True)
