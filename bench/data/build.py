"""The entry points the harness uses: ``build_data`` loads a dataset, ``check_data`` and
``describe`` validate a data config and read its shape without loading anything."""
from __future__ import annotations

import torch

from rankbench.bench.checks import bad, is_int

from .base import Data
from .cifar import CIFAR_LAYOUT, cifar_classes, check_cifar, load_cifar
from .digits import load_digits
from .imagenet import check_imagenet, imagenet_classes, imagenet_data
from .memory import adapt_splits, memory_data
from .options import input_shape, options
from .synthetic import load_synthetic


def check_data(cfg: dict) -> None:
    """Validate a data config and the files it points at, without loading any data.

    Raises ``rankbench.bench.checks.UserError`` (a ValueError) with one line naming the field, the bad
    value and what is accepted (or the missing file and the expected layout)."""
    name, opts = options(cfg)
    if name in CIFAR_LAYOUT:
        check_cifar(name, opts["root"], opts.get("labels", "fine"))
    elif name == "imagenet":
        check_imagenet(opts)


def describe(cfg: dict) -> tuple[tuple[int, ...], int]:
    """(input_shape, num_classes) of a data config without loading any data, so a spec can
    check a pretrained file against the model its trials will build. Validates as ``check_data``."""
    check_data(cfg)
    name, opts = options(cfg)
    shape = input_shape(name, opts)
    if name == "digits":
        return shape, 10
    if name in CIFAR_LAYOUT:
        return shape, cifar_classes(name, opts["labels"] if name == "cifar100" else "fine")
    if name == "imagenet":
        return shape, len(imagenet_classes(opts))
    return shape, int(opts["num_classes"])


def data_shape(cfg: dict) -> tuple[int, ...]:
    """The input shape a data config gives the model (after ``resize`` and ``channels``), from its
    options alone: validated as ``options`` does, no file read (a spec preview checks its models
    against it before the data is there)."""
    return input_shape(*options(cfg))


def build_data(cfg: dict, seed: int, batch_size: int, augment: bool, device: str | torch.device = "cpu",
               *, rank: int = 0, world_size: int = 1) -> Data:
    """Load the dataset named by ``cfg["name"]`` and return train/val iterables on ``device``.

    ``seed`` fixes the train order and augmentation (and the digits split unless
    ``split_seed`` is given); ``augment`` turns on the dataset's standard augmentation.
    For data-parallel training, ``rank``/``world_size`` give each rank its share of every
    global batch of ``batch_size * world_size`` (``batch_size`` is per rank); on the in-memory
    datasets the shares together are exactly the single-process batch, augmentation included."""
    name, opts = options(cfg)
    device = torch.device(device)
    if not (is_int(world_size) and world_size >= 1 and is_int(rank) and 0 <= rank < world_size):
        raise bad("rank/world_size", f"{rank}/{world_size}", "0 <= rank < world_size")
    if name == "imagenet":
        return imagenet_data(opts, seed, batch_size, augment, device, rank, world_size)
    if name == "digits":
        splits = load_digits(opts, seed)
    elif name in CIFAR_LAYOUT:
        splits = load_cifar(name, opts)
    else:
        splits = load_synthetic(opts)
    splits = adapt_splits(splits, opts["resize"], opts["channels"], device)
    return memory_data(name, splits, seed, batch_size, augment, device, rank, world_size)
