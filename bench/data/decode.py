"""Image decoding shared by both ImageNet layouts: one file's bytes to a sample (PIL, in the
DataLoader workers), or a whole batch of bytes to cropped images on the device (torchvision.io,
nvJPEG on CUDA). An image nothing can decode is reported, never raised: the loaders skip it."""
from __future__ import annotations

import io
import logging
import math
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def load_sample(read: Callable[[], bytes], label: int, name: str,
                transform: Callable | None) -> tuple[torch.Tensor | None, int, str, str | None]:
    """One ImageNet item, ``(payload, label, name, error)``, from a file's bytes (an ImageFolder
    file or a shard member: one code path, so both layouts convert and skip alike).
    ``transform=None``: the bytes as a uint8 tensor, decoded later in batches; else PIL's
    decode converted to RGB and passed through ``transform``. Any failure, reading included,
    gives ``payload=None`` and the error text."""
    from PIL import Image

    try:
        data = read()
        if not data:
            raise OSError("empty file")
        if transform is None:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), label, name, None
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")              # forces the full decode: truncation raises here
        return transform(rgb), label, name, None
    except Exception as e:                       # PIL raises OSError, SyntaxError, ValueError, ...
        return None, label, name, f"{type(e).__name__}: {e}"


def jpeg_components(data: bytes) -> int | None:
    """Number of colour components in a JPEG's frame header (1 gray, 3 YCbCr, 4 CMYK/YCCK),
    or None when ``data`` is not a JPEG or the header is not within the given bytes."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                       # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[i + 9] if i + 9 < n else None      # SOFn: len(2) P(1) Y(2) X(2) Nf(1)
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


class TensorDecoder:
    """Batched ``torchvision.io`` decoding and ImageNet crops on ``device``.

    On CUDA the JPEGs of a batch go to nvJPEG in one ``decode_jpeg(list, device="cuda")``
    call; what nvJPEG should not or cannot take (CMYK/YCCK JPEGs, PNGs and other formats, a
    batch that fails) is decoded one by one on the CPU by libjpeg/libpng, then PIL, and an
    image nothing can decode is reported as bad. Crops and resizes (antialiased bilinear, as
    torchvision's RandomResizedCrop / Resize do on tensors) run per image on the device.
    Returns images with values in [0, 255] (uint8 on CPU, float on CUDA); normalization is
    the loader's job."""

    def __init__(self, device: torch.device, train: bool, size: int = 224, resize: int = 256, seed: int = 0):
        import random

        self.device, self.train, self.size, self.resize = torch.device(device), train, size, resize
        self.rng = random.Random(seed)          # crop boxes are scalar draws: Python's RNG is cheapest
        self.batch_failures = 0

    def _decode_cpu(self, data: torch.Tensor) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image

        try:
            return decode_image(data, mode=ImageReadMode.RGB)
        except Exception:
            from PIL import Image

            with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
                arr = np.asarray(im.convert("RGB"))
            return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def decode(self, datas: list[torch.Tensor]) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        # torchvision 0.29 deprecates torchvision.io decoding in favour of TorchCodec and warns
        # on every call; the functions still work, so keep the log readable
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision",
                                    category=DeprecationWarning)
            return self._decode(datas)

    def _decode(self, datas: list[torch.Tensor]) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[torch.Tensor | None] = [None] * len(datas)
        errors: dict[int, str] = {}
        plain = [i for i, d in enumerate(datas) if jpeg_components(d[:262144].numpy().tobytes()) in (1, 3)]
        rest = sorted(set(range(len(datas))) - set(plain))
        if plain:
            try:
                dec = decode_jpeg([datas[i] for i in plain], mode=ImageReadMode.RGB, device=self.device)
                for i, t in zip(plain, dec):
                    out[i] = t
            except Exception as e:               # one bad file fails the whole batched call
                self.batch_failures += 1
                if self.batch_failures == 1:
                    log.warning("imagenet: batched decode_jpeg on %s failed (%s); decoding that batch "
                                "image by image on the CPU", self.device, e)
                rest = sorted(rest + plain)
        for i in rest:
            try:
                out[i] = self._decode_cpu(datas[i]).to(self.device, non_blocking=True)
            except Exception as e:
                errors[i] = f"{type(e).__name__}: {e}"
        return out, errors

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params (scale 0.08..1, ratio 3/4..4/3)."""
        area = h * w
        lo, hi = math.log(3 / 4), math.log(4 / 3)
        for _ in range(10):
            target = area * self.rng.uniform(0.08, 1.0)
            aspect = math.exp(self.rng.uniform(lo, hi))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return self.rng.randint(0, h - ch), self.rng.randint(0, w - cw), ch, cw
        ratio = w / h
        if ratio < 3 / 4:
            cw, ch = w, int(round(w / (3 / 4)))
        elif ratio > 4 / 3:
            ch, cw = h, int(round(h * (4 / 3)))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # CPU has a fast uint8 antialiased bilinear kernel (~4x the float one, and the same
        # rounding as torchvision's uint8 path); CUDA implements the antialiased kernel for
        # floating types only
        if x.device.type != "cpu":
            x = x.float()
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    def transform(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        s = self.size
        if self.train:
            i, j, ch, cw = self._crop_box(h, w)
            x = self._resize(img[None, :, i:i + ch, j:j + cw], (s, s))
            if self.rng.random() < 0.5:
                x = x.flip(-1)
            return x[0]
        # Resize(shorter side = resize) then CenterCrop(size), as torchvision computes them
        if h <= w:
            nh, nw = self.resize, int(self.resize * w / h)
        else:
            nh, nw = int(self.resize * h / w), self.resize
        x = self._resize(img[None], (nh, nw))
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        return x[0, :, top:top + s, left:left + s]

    def __call__(self, datas: list[torch.Tensor]) -> tuple[torch.Tensor, list[int], dict[int, str]]:
        imgs, errors = self.decode(datas)
        keep = [i for i, im in enumerate(imgs) if im is not None]
        if not keep:
            return torch.empty(0, 3, self.size, self.size, device=self.device), keep, errors
        return torch.stack([self.transform(imgs[i]) for i in keep]), keep, errors
