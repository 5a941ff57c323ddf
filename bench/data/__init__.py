"""Datasets: digits (embedded), CIFAR-10/100 (python pickles), ImageNet (ImageFolder or
WebDataset .tar shards), synthetic.

``build_data(cfg, seed, batch_size, augment, device) -> Data`` is the only entry point the
harness uses; ``check_data(cfg)`` validates a data config (names, options, files on disk)
without loading anything, so a spec fails before any training starts; ``describe(cfg)`` gives
the input shape and class count the same way.

Small datasets (digits, CIFAR, synthetic) live as one tensor on the training device and are
batched, augmented and normalized there (``memory``). ImageNet streams from disk (``imagenet``,
``stream``): worker processes read files (``imagefolder``) or members of shards (``shards``)
and, on the PIL path, decode and crop them; on CUDA the default path decodes whole batches with
nvJPEG (``decode``). Unreadable images are skipped and counted.

Modules, each importing only those above it in this list::

    base         Data, the dataset path error, the usable CPU count
    memory       TensorLoader, CropFlip, Splits: in-memory datasets
    digits, synthetic, cifar      the in-memory datasets
    decode       one file's bytes to a sample; batched decoding and crops on the device
    imagefolder  ImageFolder layout, classes, file listing, ImageFolderSamples
    shards       WebDataset .tar shards: index, TarSamples, ImageFolder -> shards
    stream       StreamLoader, EpochSampler, collate_samples
    imagenet     layout choice, checks, ImageNet loaders over either layout
    options      dataset names, options, defaults and their validation
    build        build_data, check_data, describe, data_shape
    fake         synthetic JPEG ImageFolders and shards
    probe        ``python -m rankbench.bench.data``: input-pipeline images/s, shard writing

May import: ``rankbench.bench.checks``, ``rankbench.bench.measure`` (the probe times a
training step).
"""
from .base import Data
from .build import build_data, check_data, data_shape, describe
from .cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, OFFICIAL_MEAN, OFFICIAL_STD
from .fake import fake_imagefolder, write_fake_imagefolder, write_fake_shards
from .imagenet import IMAGENET_LAYOUTS, IMAGENET_MEAN, IMAGENET_STD
from .memory import CropFlip, TensorLoader
from .options import DATASETS, OPTIONS
from .shards import imagefolder_to_shards

__all__ = [
    "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_MEAN", "CIFAR10_STD", "DATASETS", "IMAGENET_LAYOUTS", "IMAGENET_MEAN",
    "IMAGENET_STD", "OFFICIAL_MEAN", "OFFICIAL_STD", "OPTIONS", "CropFlip", "Data", "TensorLoader", "build_data",
    "check_data", "data_shape", "describe",
    "fake_imagefolder", "imagefolder_to_shards", "write_fake_imagefolder", "write_fake_shards",
]
