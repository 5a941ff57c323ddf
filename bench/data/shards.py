"""ImageNet as WebDataset ``.tar`` shards: read them by index, write them from an ImageFolder.

On NFS and other shared cluster storage an epoch over an ImageFolder is 1.28M opens and stats
of small files, and that metadata traffic, not the bytes, is what stalls the input pipeline.
Shards hold the same files in a few hundred large tars. The layout is the WebDataset one, so
shards a user already has work as they are::

    root/train/imagenet-train-000000.tar ...   members KEY.jpg (or .jpeg/.png/.webp) + KEY.cls
    root/val/imagenet-val-000000.tar ...       (.cls: the class index as ASCII text)
    root/classes.txt                           optional: class names, one a line, index = line

Each shard is indexed once (member offsets and sizes from the tar headers, labels from the
``.cls`` members) and then read by random access, so the ImageFolder path's samplers,
decoders and skip counting apply unchanged (see ``TarSamples``).
"""
from __future__ import annotations

import io
import logging
import multiprocessing
import os
import tarfile
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rankbench.bench.checks import bad, is_int

from .base import bad_path, usable_cpus
from .decode import load_sample
from .imagefolder import IMAGE_EXTENSIONS, class_dirs, imagefolder_classes, scan

log = logging.getLogger(__name__)
EXPECTED = ("WebDataset shards root/train/*.tar and root/val/*.tar, members KEY.jpg (or .jpeg, .png, "
            ".webp) + KEY.cls (class index), optional root/classes.txt")
CLASSES_TXT = "one distinct class name a line"
# processes that index shards, and threads that read files when writing them
_INDEX_PROCS = 16
_IO_THREADS = 16


def tar_files(split_dir: Path) -> list[Path]:
    """The shards of one split, sorted by name (so the sample order is fixed)."""
    with os.scandir(split_dir) as it:
        return sorted(Path(e.path) for e in it if e.is_file() and e.name.endswith(".tar"))


def resolve_layout(root: Path, layout: str) -> str:
    """``auto`` -> ``tar`` when ``root/train`` holds ``.tar`` files and no class folders, else
    ``imagefolder``. Class folders win: ImageNet's official train archive unpacks into one
    ``n0xxxxxxx.tar`` per class, and those often stay beside the folders extracted from them."""
    if layout != "auto":
        return layout
    train = root / "train"
    return "tar" if train.is_dir() and tar_files(train) and not class_dirs(train) else "imagefolder"


def read_classes(root: Path) -> list[str] | None:
    """Class names from ``root/classes.txt`` (line i names class i), or None when absent."""
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines()]
    while names and not names[-1]:
        names.pop()                                  # trailing blank lines
    for i, n in enumerate(names):
        if not n:
            raise bad_path(path, f"line {i + 1} is empty", CLASSES_TXT)
    if not names:
        raise bad_path(path, "names no classes", CLASSES_TXT)
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise bad_path(path, f"names class {dup!r} twice", CLASSES_TXT)
    return names


def check_shards(root: Path) -> None:
    """The shard layout's folders and classes.txt, without opening a shard (cheap: one listing
    of each split folder), so a spec fails before any training starts."""
    if not root.is_dir():
        raise bad_path(root, "is not a folder" if root.exists() else "does not exist", EXPECTED)
    for split in ("train", "val"):
        d = root / split
        if not d.is_dir():
            raise bad_path(root, f"has no {split}/ folder", EXPECTED)
        if not tar_files(d):
            raise bad_path(d, "has no .tar shards (data.layout: tar)", EXPECTED)
    read_classes(root)


# --------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ShardIndex:
    """Where every sample of a split lies: shard number, byte offset and size of its image
    member, label and member name. NumPy arrays, not a list of tuples: ImageNet's 1.28M
    samples cost ~80 MB instead of ~300 MB, and forked DataLoader workers share them (a few
    array objects: no per-item reference counts to touch, so no copy-on-write copies)."""

    shards: tuple[str, ...]
    shard: np.ndarray           # int32, index into shards
    offset: np.ndarray          # int64, start of the image bytes
    size: np.ndarray            # int64
    label: np.ndarray           # int64
    name: np.ndarray            # bytes, the image member's name (for messages)

    def __len__(self) -> int:
        return len(self.label)

    def path(self, i: int) -> str:
        """``shard.tar/member``: names an image in logs the way a file path would."""
        return f"{self.shards[self.shard[i]]}/{self.name[i].decode()}"

    def take(self, idx: np.ndarray) -> "ShardIndex":
        return ShardIndex(self.shards, self.shard[idx], self.offset[idx], self.size[idx], self.label[idx],
                          self.name[idx])


def _split_name(member: str) -> tuple[str, str]:
    """WebDataset's (key, extension): the extension starts at the first dot of the base name."""
    head, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _parse_label(text: bytes, where: str) -> int:
    try:
        label = int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        label = -1
    if label < 0:
        raise bad_path(where, f"{text[:20]!r} is not a class index", "a non-negative integer as ASCII text")
    return label


def _index_shard(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(offsets, sizes, labels, member names, truncation message or "") of one shard."""
    images: dict[str, tarfile.TarInfo] = {}
    labels: dict[str, int] = {}
    order: dict[str, None] = {}              # keys in tar order (a dict: ordered, O(1) lookup)
    cut = ""
    try:
        with tarfile.open(path, mode="r:") as tar:
            try:
                for m in tar:
                    if m.isfile() and _add_member(tar, m, path, images, labels):
                        order[_split_name(m.name)[0]] = None
            except tarfile.ReadError as e:
                if not order:
                    raise
                cut = str(e)
    except (tarfile.TarError, OSError) as e:
        raise bad_path(path, f"not a readable tar ({type(e).__name__}: {e})", EXPECTED) from e
    if cut:
        # a copy cut short: keep what precedes the cut, as an ImageFolder would list the files
        # that arrived. The member the cut runs through fails its read and is counted as skipped
        # every epoch, like a truncated JPEG; a key that lost its other member is dropped here.
        order = {k: None for k in order if k in images and k in labels}
        cut = f"shard {path} is truncated ({cut}); using the {len(order)} samples before the cut"
    return (*_arrays(path, list(order), images, labels), cut)


def _add_member(tar: tarfile.TarFile, m: tarfile.TarInfo, path: str, images: dict[str, tarfile.TarInfo],
                labels: dict[str, int]) -> bool:
    """Record an image or a .cls member; False for anything else (.json, .txt, ...: metadata
    other tools wrote, which this reader does not use)."""
    key, ext = _split_name(m.name)
    if ext == "cls":
        labels[key] = _parse_label(tar.extractfile(m).read(), f"{path}/{m.name}")
        return True
    if "." + ext not in IMAGE_EXTENSIONS:
        return False
    if key in images:
        raise bad_path(f"{path}/{m.name}", f"key {key!r} has a second image ({images[key].name})",
                       "one image per key")
    images[key] = m
    return True


def _arrays(path: str, order: list[str], images: dict[str, tarfile.TarInfo],
            labels: dict[str, int]) -> tuple[np.ndarray, ...]:
    for key in order:
        if key not in labels:
            raise bad_path(f"{path}/{images[key].name}", f"has no {key}.cls member", EXPECTED)
        if key not in images:
            raise bad_path(f"{path}/{key}.cls", f"has no image member {key}.jpg", EXPECTED)
    ms = [images[k] for k in order]
    return (np.array([m.offset_data for m in ms], dtype=np.int64), np.array([m.size for m in ms], dtype=np.int64),
            np.array([labels[k] for k in order], dtype=np.int64), np.array([m.name.encode() for m in ms], dtype=bytes))


# (path, size, mtime_ns) -> _index_shard's result: describe() and build_data() in one process
# index a shard once, and a shard rewritten in place is indexed again
_INDEXED: dict[tuple[str, int, int], tuple] = {}


def _index_shards(paths: list[str]) -> list[tuple]:
    """_index_shard of every path, cached. Parsing tar headers is Python-bound (~40 us a
    sample: ~1 min for ImageNet's 1.28M on one core), so many shards are parsed in forked
    processes, which also overlap the header reads' round trips on NFS."""
    keys = []
    for p in paths:
        st = os.stat(p)
        keys.append((p, st.st_size, st.st_mtime_ns))
    todo = [k for k in keys if k not in _INDEXED]
    procs = min(len(todo), usable_cpus(), _INDEX_PROCS)
    if procs > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork")) as ex:
            done = list(ex.map(_index_shard, [k[0] for k in todo], chunksize=max(1, len(todo) // (4 * procs))))
    else:
        done = [_index_shard(k[0]) for k in todo]
    for k, part in zip(todo, done):
        _INDEXED[k] = part
        if part[4]:
            log.warning("imagenet: %s", part[4])
    return [_INDEXED[k] for k in keys]


def index_split(split_dir: Path) -> ShardIndex:
    """Index every shard of a split."""
    paths = [str(p) for p in tar_files(split_dir)]
    parts = _index_shards(paths)
    if not parts or not sum(len(p[0]) for p in parts):
        raise bad_path(split_dir, "has no image + .cls samples in its shards", EXPECTED)
    shard = np.concatenate([np.full(len(p[0]), j, dtype=np.int32) for j, p in enumerate(parts)])
    offset, size, label, name = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return ShardIndex(tuple(paths), shard, offset, size, label, name)


def first_per_class(index: ShardIndex, per_class: int | None) -> ShardIndex:
    """The first ``per_class`` samples of each class in shard order (``train_per_class``)."""
    if per_class is None:
        return index
    lab = index.label
    order = np.argsort(lab, kind="stable")
    rank = np.empty(len(lab), dtype=np.int64)
    rank[order] = np.arange(len(lab)) - np.searchsorted(lab[order], lab[order], side="left")
    return index.take(np.nonzero(rank < per_class)[0])


def split_classes(root: Path, *indexes: ShardIndex) -> list[str]:
    """classes.txt's names, else ``"0".."K-1"`` with K = the largest label + 1; every label
    must name a class."""
    names = read_classes(root)
    top = max(int(ix.label.max()) for ix in indexes)
    if names is None:
        return [str(i) for i in range(top + 1)]
    if top >= len(names):
        ix = next(ix for ix in indexes if int(ix.label.max()) == top)
        i = int(np.argmax(ix.label))
        raise bad_path(ix.path(i), f"has class {top}, but {root / 'classes.txt'} names {len(names)} classes",
                       f"0..{len(names) - 1}")
    return names


def load_splits(root: Path, train_per_class: int | None = None,
                val_per_class: int | None = None) -> tuple[ShardIndex, ShardIndex, list[str]]:
    """(train index, val index, class names) of a shard root."""
    check_shards(root)
    train, val = index_split(root / "train"), index_split(root / "val")
    classes = split_classes(root, train, val)
    return first_per_class(train, train_per_class), first_per_class(val, val_per_class), classes


def shard_classes(root: Path) -> list[str]:
    """Class names without building a loader: classes.txt alone when it exists (no shard is
    opened), else the labels of every shard (cached for the build_data that follows)."""
    check_shards(root)
    names = read_classes(root)
    return names if names is not None else split_classes(root, index_split(root / "train"),
                                                         index_split(root / "val"))


# --------------------------------------------------------------------------- reading


def _allow_open_files(n: int) -> int:
    """How many shards one process keeps open. All of them when the open-file limit allows
    (raising the soft limit towards the hard one): reopening a shard per image would bring back
    the per-file open/stat round trips that shards exist to avoid. Else an LRU of what fits."""
    margin = 256                                  # for sockets, pipes, libraries of the process
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        inf = resource.RLIM_INFINITY
        if soft != inf and soft < n + margin:
            soft = n + margin if hard == inf else min(n + margin, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return n if soft == inf else max(16, min(n, soft - margin))
    except (ImportError, ValueError, OSError):
        return 16


class TarSamples(torch.utils.data.Dataset):
    """ImageFolderSamples' contract over shards: item ``i`` is ``(payload, label, name, error)``
    with name ``shard.tar/member``, decoded by the same code (``decode.load_sample``), so the
    StreamLoader, TensorDecoder, corrupt/CMYK/grayscale handling and skip counts are shared.

    Random access by index, not streaming shards through a shuffle buffer: the ImageFolder
    path's EpochSampler then gives an exact permutation per (seed, epoch), every sample once per
    epoch split disjointly over DDP ranks (by the sampler) and DataLoader workers (each batch of
    indices goes to one worker), unpadded disjoint val shares, and the same sampling as an
    ImageFolder (the same batches where the sample order is the same). What shards save on
    shared storage is the per-file metadata traffic, which one open descriptor per shard
    removes; the reads stay random (~110 KB each), which NFS, SSDs and parallel file systems
    serve well. Object stores and spinning disks want sequential streaming (the webdataset
    package) instead."""

    def __init__(self, index: ShardIndex, transform: Callable | None = None, raw_bytes: bool = False):
        if not raw_bytes and transform is None:
            raise ValueError("TarSamples: transform is required unless raw_bytes=True")
        self.index, self.transform, self.raw_bytes = index, transform, raw_bytes
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._max_open = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # descriptors belong to the process that opened them; a spawned worker opens its own
        return {**self.__dict__, "_fds": OrderedDict()}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def _fd(self, j: int) -> int:
        fd = self._fds.get(j)
        if fd is not None:
            self._fds.move_to_end(j)
            return fd
        if not self._max_open:
            self._max_open = _allow_open_files(len(self.index.shards))
        if len(self._fds) >= self._max_open:
            os.close(self._fds.popitem(last=False)[1])
        fd = self._fds[j] = os.open(self.index.shards[j], os.O_RDONLY)
        return fd

    def _read(self, j: int, offset: int, size: int) -> bytes:
        # pread: no shared file position, so a descriptor inherited over fork stays correct
        fd, parts, got = self._fd(j), [], 0
        while got < size:
            chunk = os.pread(fd, size - got, offset + got)
            if not chunk:
                raise OSError(f"shard ends {size - got} bytes early (truncated shard)")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str, str | None]:
        ix = self.index
        j, off, size = int(ix.shard[i]), int(ix.offset[i]), int(ix.size[i])
        return load_sample(lambda: self._read(j, off, size), int(ix.label[i]), ix.path(i),
                           None if self.raw_bytes else self.transform)


# --------------------------------------------------------------------------- writing


def _member(name: str, size: int) -> tarfile.TarInfo:
    # fixed owner, mode and time: the same images give byte-identical shards
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    return info


def _key(path: str, cls: str, used: set[str]) -> str:
    """``class/stem``: unique, readable, and free of dots (WebDataset splits the key from the
    extension at the first dot of the base name)."""
    stem = Path(path).name.rsplit(".", 1)[0].replace(".", "_")
    key, n = f"{cls}/{stem}", 1
    while key in used:                            # x.jpg and x.png in one class folder
        n += 1
        key = f"{cls}/{stem}_{n}"
    used.add(key)
    return key


def write_shards(samples: list[tuple[str, int]], out_dir: Path, prefix: str, classes: list[str],
                 per_shard: int = 1000) -> list[Path]:
    """Copy image files (bytes as they are, not re-encoded: a corrupt file stays corrupt and is
    skipped at training time, as in the ImageFolder) into ``out_dir/prefix-NNNNNN.tar``, each
    sample as ``KEY.cls`` + ``KEY.jpg`` (or the file's own image extension)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    written: list[Path] = []
    with ThreadPoolExecutor(_IO_THREADS) as ex:           # overlap the small-file reads (NFS)
        for s in range(0, len(samples), per_shard):
            chunk = samples[s:s + per_shard]
            path = out_dir / f"{prefix}-{len(written):06d}.tar"
            tmp = path.with_name(path.name + ".tmp")      # atomic: a half-written shard is never a .tar
            with tarfile.open(tmp, "w") as tar:
                for (src, label), data in zip(chunk, ex.map(lambda p: Path(p[0]).read_bytes(), chunk)):
                    key = _key(src, classes[label], used)
                    ext = Path(src).suffix.lower().lstrip(".")
                    cls = str(label).encode()
                    tar.addfile(_member(f"{key}.cls", len(cls)), io.BytesIO(cls))
                    name = f"{key}.{'jpg' if ext == 'jpeg' else ext}"      # .jpg: what wds recipes ask for
                    tar.addfile(_member(name, len(data)), io.BytesIO(data))
            os.replace(tmp, path)
            written.append(path)
    return written


def imagefolder_to_shards(src: str | os.PathLike, dst: str | os.PathLike, per_shard: int = 1000,
                          seed: int = 0) -> dict[str, int]:
    """Convert an ImageFolder root (train/<class>/*, val/<class>/*) into WebDataset shards at
    ``dst`` (train/, val/, classes.txt). Returns the images and shards written per split."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not (is_int(per_shard) and per_shard > 0):
        raise bad("per_shard (--shard-size)", per_shard, "a positive integer")
    classes = imagefolder_classes(src)
    for split in ("train", "val"):
        if (dst / split).is_dir() and tar_files(dst / split):
            raise bad_path(dst, f"{split}/ already holds .tar shards", "a folder without .tar shards",
                           field="dst (--write-shards)")
    out: dict[str, int] = {}
    for split in ("train", "val"):
        samples = scan(src / split, classes, None)
        if split == "train":
            # mixed classes in every shard, so the shards also suit streaming readers (webdataset's
            # shard shuffle + buffer); this reader indexes and does not depend on it
            perm = np.random.default_rng(seed).permutation(len(samples))
            samples = [samples[i] for i in perm]
        shards = write_shards(samples, dst / split, f"imagenet-{split}", classes, per_shard)
        out[f"{split}_images"], out[f"{split}_shards"] = len(samples), len(shards)
    tmp = dst / "classes.txt.tmp"
    tmp.write_text("".join(f"{c}\n" for c in classes))
    os.replace(tmp, dst / "classes.txt")
    return out

