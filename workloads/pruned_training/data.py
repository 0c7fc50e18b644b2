"""Datasets for ``charbench prune-train``: bundled digits (default), CIFAR-10/100, ImageFolder.

Nothing is downloaded. ``digits`` is scikit-learn's bundled 8x8 handwritten digits
(1797 images), built once into the prepare cache: scaled to [0, 1], standardised,
upscaled (bilinear) to ``image_size``, with fixed Gaussian noise of ``noise_sigma`` so that a
dense model does not saturate at 100%, split 80/20 with a fixed seed. CIFAR reads the
python pickle batches from ``--data-dir``; ``imagenet`` reads ``train/<class>/*`` and
``val/<class>/*`` (``.npy`` arrays, or images through Pillow when it is installed)::

    data = load_dataset(cfg, cache_dir)
    for x, y in data.train.batches(64, seed=0, epoch=3): ...
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from charbench.errors import ConfigError

DATASETS = ["digits", "cifar10", "cifar100", "imagenet"]
DIGITS_FILE = "digits.npz"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_HELP = "https://www.cs.toronto.edu/~kriz/cifar.html"


class Split:
    """One split held in memory: images ``[N, C, H, W]`` (uint8 or float) and labels.

    Attributes:
        x: images; uint8 images are scaled to [0, 1] and normalised per batch.
        y: int64 labels.
        mean, std: per-channel normalisation (applied to uint8 images only).
        augment: random crop (pad 4) and horizontal flip when training (CIFAR).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: tuple[float, ...] = (), std: tuple[float, ...] = (), augment: bool = False) -> None:
        self.x, self.y, self.augment = x, y, augment
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) if mean else None
        self.std = torch.tensor(std).view(1, -1, 1, 1) if std else None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        return tuple(int(v) for v in self.x.shape[1:])  # type: ignore[return-value]

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (float32, normalised) and labels at ``idx``."""
        x = self.x[idx]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
            if self.mean is not None and self.std is not None:
                x = (x - self.mean) / self.std
        return x.float(), self.y[idx]

    def batches(self, batch_size: int, seed: int | None = None, epoch: int = 0, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches: shuffled by (seed, epoch) when ``seed`` is given (resumable), else in order."""
        n = len(self) if limit is None else min(limit, len(self))
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(len(self), generator=gen)[:n]
        else:
            order = torch.arange(n)
        for start in range(0, n, batch_size):
            x, y = self.get(order[start:start + batch_size])
            if self.augment and gen is not None:
                x = _crop_flip(x, gen)
            yield x, y


def _crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip per image (the standard CIFAR augmentation)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=gen)
    dy = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        img = padded[i, :, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        out[i] = img.flip(-1) if bool(flip[i]) else img
    return out


@dataclass
class Dataset:
    """Train and test splits and what the report says about them."""

    name: str
    description: str
    train: Split
    test: Split
    num_classes: int


# -- digits (default) --------------------------------------------------------------------------
def build_digits(cache_dir: Path, image_size: int, noise_sigma: float, seed: int = 0) -> None:
    """Write the noisy, upscaled digits into ``cache_dir/digits.npz`` (the prepare step)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    x = x + noise_sigma * torch.randn(x.shape, generator=gen)
    order = torch.randperm(x.shape[0], generator=gen)
    n_test = x.shape[0] // 5
    y = torch.tensor(raw.target, dtype=torch.int64)
    test, train = order[:n_test], order[n_test:]
    np.savez(cache_dir / DIGITS_FILE, train_x=x[train].numpy(), train_y=y[train].numpy(), test_x=x[test].numpy(), test_y=y[test].numpy())


def load_digits_cache(cache_dir: Path, image_size: int, noise_sigma: float) -> Dataset:
    """The digits built by :func:`build_digits`."""
    z = np.load(cache_dir / DIGITS_FILE)
    desc = (f"scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes), upscaled to {image_size}x{image_size} "
            f"with Gaussian noise sigma {noise_sigma:g} (fixed, seed 0), 80/20 split")
    return Dataset("digits", desc, Split(torch.from_numpy(z["train_x"]), torch.from_numpy(z["train_y"])),
                   Split(torch.from_numpy(z["test_x"]), torch.from_numpy(z["test_y"])), 10)


# -- CIFAR --------------------------------------------------------------------------------------
def _cifar_files(name: str) -> tuple[str, list[str], str, bytes]:
    if name == "cifar10":
        return "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"
    return "cifar-100-python", ["train"], "test", b"fine_labels"


def cifar_folder(name: str, data_dir: Path) -> Path:
    """The folder holding the batches: ``data_dir`` itself or its standard sub-folder.

    Raises:
        ConfigError: no batches there (says where to put them).
    """
    sub, train, test, _ = _cifar_files(name)
    for folder in (data_dir, data_dir / sub):
        if all((folder / f).is_file() for f in [*train, test]):
            return folder
    raise ConfigError(
        f"--data-dir: no {name.upper().replace('CIFAR', 'CIFAR-')} python batches in {data_dir} (looked for {', '.join([*train, test])} "
        f"there and in {data_dir / sub}); extract the 'python version' from {CIFAR_HELP} into {data_dir} (charbench never downloads)"
    )


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch: uint8 images ``[N, 3, 32, 32]`` and int64 labels."""
    with open(path, "rb") as f:
        d: dict[bytes, Any] = pickle.load(f, encoding="bytes")
    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[label_key], dtype=np.int64)


def load_cifar(name: str, data_dir: Path) -> Dataset:
    """CIFAR-10/100 from the python pickle batches in ``data_dir``."""
    folder = cifar_folder(name, data_dir)
    _, train_files, test_file, key = _cifar_files(name)
    parts = [read_cifar_batch(folder / f, key) for f in train_files]
    tx, ty = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    vx, vy = read_cifar_batch(folder / test_file, key)
    classes = 10 if name == "cifar10" else 100
    desc = f"{name.upper()} python batches from {folder} ({len(ty)} train, {len(vy)} test; crop+flip augmentation)"
    return Dataset(name, desc, Split(torch.from_numpy(tx), torch.from_numpy(ty), CIFAR_MEAN, CIFAR_STD, augment=True),
                   Split(torch.from_numpy(vx), torch.from_numpy(vy), CIFAR_MEAN, CIFAR_STD), classes)


# -- ImageFolder (ImageNet) -----------------------------------------------------------------------
class FolderSplit(Split):
    """``<root>/<class>/<file>`` images decoded per batch, resized to ``size`` (no augmentation)."""

    def __init__(self, root: Path, classes: list[str], size: int) -> None:
        self.files = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir()) if p.is_file()]
        self.size = size
        super().__init__(torch.empty(0, 3, size, size), torch.tensor([i for _, i in self.files], dtype=torch.int64))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = [_read_image(self.files[int(i)][0], self.size) for i in idx]
        return torch.stack(imgs), self.y[idx]


def _read_image(path: Path, size: int) -> torch.Tensor:
    """One image as float32 ``[3, size, size]`` in [0, 1] (``.npy`` HWC/CHW arrays, else Pillow)."""
    if path.suffix == ".npy":
        a = np.load(path)
    else:
        try:
            from PIL import Image
        except ImportError:
            raise ConfigError(f"--data-dir: {path} needs Pillow to decode; pip install pillow (or store images as .npy arrays)") from None
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"))
    t = torch.from_numpy(np.ascontiguousarray(a)).float()
    if t.dim() == 2:
        t = t.unsqueeze(-1).expand(-1, -1, 3)
    if t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
        t = t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.max() > 1.0:
        t = t / 255.0
    return torch.nn.functional.interpolate(t.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False)[0]


def load_image_folder(data_dir: Path, size: int) -> Dataset:
    """ImageNet-style ``train/<class>/*`` and ``val/<class>/*``.

    Raises:
        ConfigError: either folder missing or without class folders.
    """
    train_root, val_root = data_dir / "train", data_dir / "val"
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir()) if train_root.is_dir() else []
    if not classes or not val_root.is_dir():
        raise ConfigError(f"--data-dir: {data_dir} needs train/<class>/<images> and val/<class>/<images> (ImageFolder layout); charbench never downloads")
    desc = f"ImageFolder {data_dir} ({len(classes)} classes, resized to {size}x{size})"
    return Dataset("imagenet", desc, FolderSplit(train_root, classes, size), FolderSplit(val_root, classes, size), len(classes))


def load_dataset(name: str, data_dir: str | None, cache_dir: Path | None, image_size: int, noise_sigma: float) -> Dataset:
    """The configured dataset.

    Raises:
        ConfigError: a dataset that needs ``--data-dir`` without one, or one that is not there.
    """
    if name == "digits":
        if cache_dir is None:
            raise ConfigError("digits: the prepare cache is missing (the study's prepare step did not run)")
        return load_digits_cache(cache_dir, image_size, noise_sigma)
    if data_dir is None:
        raise ConfigError(f"--dataset {name} needs --data-dir DIR (a local copy; charbench never downloads)")
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"--data-dir: {root} is not a folder")
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root)
    return load_image_folder(root, image_size)
