"""Small datasets held as tensors on the training device: batched, augmented and normalized
there, with no worker processes, no per-image Python and no host-to-device copy per step.

A dataset module (digits, CIFAR, synthetic) returns its raw splits and recipe as ``Splits``;
``memory_data`` turns them into ``Data`` of two ``TensorLoader``\\ s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from rankbench.bench.checks import bad

from .base import Data


class CropFlip:
    """Batched random crop (zero padding ``pad``, same output size) and optional horizontal flip,
    done on the tensor's device with one gather, no per-image Python.

    ``sample`` draws the random parameters for a batch; ``apply`` uses them. They are separate
    so a data-parallel rank can draw for the global batch and apply its own slice, which makes
    a sharded epoch see exactly the same augmented samples as a single-process one."""

    def __init__(self, pad: int, flip: bool):
        self.pad, self.flip = int(pad), bool(flip)

    def sample(self, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
        # columns: y offset, x offset, flip (0/1); all integers in one tensor
        offs = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g, device=device)
        flips = (torch.rand(n, generator=g, device=device) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool, device=device)
        return torch.cat([offs, flips.long()[:, None]], dim=1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pad
        if p > 0:
            wp = w + 2 * p
            xp = F.pad(x, (p, p, p, p))
            rows = params[:, 0:1] + torch.arange(h, device=x.device)          # (B, H)
            cols = params[:, 1:2] + torch.arange(w, device=x.device)          # (B, W)
            idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)
            x = xp.reshape(b, c, -1).gather(2, idx.expand(b, c, h * w)).view(b, c, h, w)
        if self.flip:
            x = torch.where(params[:, 2].bool()[:, None, None, None], x.flip(3), x)
        return x


@dataclass(frozen=True)
class Normalization:
    """How a loader turns raw values into model inputs: ``x * scale``, then ``(x - mean) / std``
    per channel (no ``mean``: the scaling alone)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1.0


class TensorLoader:
    """Re-iterable batches over tensors that already live on the training device.

    Each ``iter()`` is one epoch; the order and augmentation of epoch ``e`` depend only on
    ``(seed, e)`` (see ``set_epoch``), so a resumed trial replays the same epochs.
    ``x`` is stored raw (uint8 or float in [0, 1]); augmentation runs on the raw values (so
    crop padding is black, as in torchvision's pipeline) and ``normalize`` last.
    ``rank``/``world_size`` shard each global batch of ``batch_size * world_size`` samples."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        augment: CropFlip | None = None,
        normalize: Normalization = Normalization(),
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise bad("train.batch_size", batch_size, "an integer >= 1")
        if not 0 <= rank < world_size:
            raise bad("rank", rank, f"0 <= rank < world_size ({world_size})")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.augment, self.rank, self.world_size = augment, rank, world_size
        self.scale = normalize.scale
        n, gb = len(x), self.batch_size * world_size
        # drop the ragged last batch when training (a batch of 1 breaks batch norm), unless
        # the dataset is smaller than one batch
        self.drop_last = drop_last and n >= gb
        self.steps = n // gb if self.drop_last else math.ceil(n / gb)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, std = normalize.mean, normalize.std
        self.mean = torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape) if mean else None
        self.std = torch.tensor(std, dtype=torch.float32, device=x.device).view(shape) if std else None
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (for resuming)."""
        self.epoch = int(epoch)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def _generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device=self.x.device)
        g.manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        return g

    def _finish(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.float()
        if self.scale != 1.0:
            xb = xb * self.scale
        if self.mean is not None:
            xb = (xb - self.mean) / self.std
        return xb

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        n, dev = len(self.x), self.x.device
        g = self._generator(epoch)
        order = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        gb = self.batch_size * self.world_size
        for i in range(self.steps):
            idx = order[i * gb:(i + 1) * gb]
            params = self.augment.sample(len(idx), g, dev) if self.augment is not None else None
            if self.world_size > 1:
                # contiguous chunk per rank; the last ragged global batch splits evenly-ish
                per = math.ceil(len(idx) / self.world_size)
                sl = slice(self.rank * per, (self.rank + 1) * per)
                idx = idx[sl]
                params = params[sl] if params is not None else None
                if len(idx) == 0:          # a tiny ragged last batch may leave a rank nothing
                    continue
            # index_select on the 2-D view: on CPU, gathering whole rows of the N-D uint8 tensor
            # is ~50x slower than gathering rows of its (N, C*H*W) view
            xb = self.x.reshape(n, -1).index_select(0, idx).view(len(idx), *self.x.shape[1:])
            if params is not None:
                xb = self.augment.apply(xb, params)
            yield self._finish(xb), self.y.index_select(0, idx)


@dataclass
class Splits:
    """One in-memory dataset as its module loads it: raw train/val tensors (uint8 images or
    floats), the class names, and how to normalize (``x * scale``, then ``(x - mean) / std``)
    and augment them."""

    xtr: torch.Tensor
    ytr: torch.Tensor
    xva: torch.Tensor
    yva: torch.Tensor
    num_classes: int
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1.0
    augment: CropFlip | None = None


# images resized per chunk: a bounded float copy, whatever the dataset's size
RESIZE_CHUNK = 1024


def resize_images(x: torch.Tensor, side: int) -> torch.Tensor:
    """``x`` (N, C, H, W) resized to (N, C, side, side): bilinear, antialiased when it shrinks
    (``F.interpolate(x.float(), (side, side), mode="bilinear", align_corners=False,
    antialias=True)``, as torchvision's Resize on tensors). uint8 images stay uint8 (rounded,
    clamped to 0..255); float images stay float. Done in chunks of ``RESIZE_CHUNK`` images."""
    if tuple(x.shape[-2:]) == (side, side):
        return x
    out = torch.empty((x.shape[0], x.shape[1], side, side), dtype=x.dtype, device=x.device)
    for i in range(0, len(x), RESIZE_CHUNK):
        y = F.interpolate(x[i:i + RESIZE_CHUNK].float(), size=(side, side), mode="bilinear",
                          align_corners=False, antialias=True)
        out[i:i + RESIZE_CHUNK] = y.round_().clamp_(0, 255) if x.dtype == torch.uint8 else y
    return out


def repeat_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` (N, C, H, W) with ``channels`` channels: itself when C already is, else its one
    channel repeated (the data options allow 1 -> 3 only)."""
    if channels == x.shape[1]:
        return x
    if x.shape[1] != 1:
        raise bad("data.channels", channels, f"{x.shape[1]} (the data's own) or null",
                  "only a 1-channel image is repeated")
    return x.expand(-1, channels, -1, -1).contiguous()


def adapt_splits(s: Splits, resize: int | None, channels: int | None, device: torch.device) -> Splits:
    """``s`` with every image resized to ``resize`` x ``resize`` and repeated to ``channels``
    channels (None: as stored), on ``device`` (where the resize runs: once at load time, so
    epochs cost no more than at the new size otherwise). The normalization statistics stay the
    source's (a 1-channel mean and std repeated per channel); the augmentation's crop padding
    scales with the side, so a shift is the same fraction of the image."""
    if (resize is None and channels is None) or s.xtr.dim() != 4:
        return s
    side = s.xtr.shape[-1]
    out = []
    for x in (s.xtr, s.xva):
        x = x.to(device)
        x = resize_images(x, resize) if resize is not None else x
        out.append(repeat_channels(x, channels) if channels is not None else x)
    c = out[0].shape[1]

    def per_channel(v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return v * c if v is not None and len(v) == 1 and c > 1 else v

    augment = s.augment
    if augment is not None and resize is not None and augment.pad > 0:
        augment = CropFlip(pad=max(1, round(augment.pad * resize / side)), flip=augment.flip)
    return Splits(out[0], s.ytr, out[1], s.yva, num_classes=s.num_classes, class_names=s.class_names,
                  mean=per_channel(s.mean), std=per_channel(s.std), scale=s.scale, augment=augment)


def memory_data(name: str, s: Splits, seed: int, batch_size: int, augment: bool, device: torch.device,
                rank: int = 0, world_size: int = 1) -> Data:
    """``Data`` of ``s`` moved to ``device``: a shuffled, optionally augmented train loader and an
    in-order val loader; each rank gets its share of every global batch."""
    xtr, ytr, xva, yva = (t.to(device) for t in (s.xtr, s.ytr, s.xva, s.yva))
    shard = dict(rank=rank, world_size=world_size)
    norm = Normalization(mean=s.mean, std=s.std, scale=s.scale)
    train = TensorLoader(xtr, ytr, batch_size, shuffle=True, drop_last=True, seed=seed,
                         augment=s.augment if augment else None, normalize=norm, **shard)
    # val shards are contiguous slices without padding: gathered metrics count each image once
    val = TensorLoader(xva, yva, batch_size, shuffle=False, drop_last=False, seed=seed, normalize=norm, **shard)
    return Data(train=train, val=val, input_shape=tuple(xtr.shape[1:]), num_classes=s.num_classes,
                steps_per_epoch=len(train), name=name, train_size=len(xtr), val_size=len(xva),
                class_names=s.class_names)
