"""Calibration / evaluation data sources: .npy/.npz arrays, text files (one sample per line or paragraphs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import ConfigError


@dataclass
class DataSource:
    """Either tensors (first axis = samples) or texts; `batches` yields tuples of tensors."""

    tensors: list[torch.Tensor] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts) if self.texts else (len(self.tensors[0]) if self.tensors else 0)

    def model_inputs(self, n_inputs: int) -> list[torch.Tensor]:
        """The arrays that feed a model of `n_inputs` inputs: training data carries one trailing label per sample
        (DEFT's ids/mask/y, DenseShift's x/y), which is left out; anything else is returned as it is."""
        ts = list(self.tensors)
        if len(ts) == n_inputs + 1 and ts[-1].dim() == 1 and len(ts[-1]) == len(ts[0]):
            return ts[:-1]
        return ts

    def batches(self, batch_size: int = 1, limit: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """Tensor batches in order (deterministic)."""
        n = min(len(self), limit or len(self))
        for i in range(0, n, batch_size):
            yield tuple(t[i:min(i + batch_size, n)] for t in self.tensors)


def open_data(path: Path | str) -> DataSource:
    """Open a data file by suffix, with a clear error for anything else."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--data {p} does not exist")
    if p.suffix == ".npy":
        return DataSource([torch.from_numpy(np.load(p, allow_pickle=False))], source=str(p))
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return DataSource([torch.from_numpy(z[k]) for k in z.files], source=str(p))
    if p.is_dir():
        return open_image_dir(p)
    if p.suffix in (".txt", ".md", ".text"):
        text = p.read_text(errors="replace")
        parts = [t.strip() for t in text.split("\n\n") if t.strip()]
        return DataSource(texts=parts, source=str(p))
    raise ConfigError(f"--data {p}: unsupported format '{p.suffix}'; use .npy, .npz (arrays), .txt (text) or a folder "
                      "(images in one sub-folder per class, or MNIST-style IDX files)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def open_image_dir(p: Path) -> DataSource:
    """A folder as (x uint8 NCHW, y int64): MNIST-style IDX files (train-images-idx3-ubyte[.gz] + labels, e.g.
    Debian's /usr/share/datasets/fashion-mnist), else one sub-folder per class (sorted names = labels 0..K-1) of
    images, all converted to the first image's size and mode (L or RGB)."""
    import gzip

    idx = sorted(p.glob("train-images-idx3-ubyte*"))
    if idx:
        lab = sorted(p.glob("train-labels-idx1-ubyte*"))
        read = lambda f: (gzip.open(f, "rb") if f.suffix == ".gz" else open(f, "rb")).read()  # noqa: E731
        x = np.frombuffer(read(idx[0]), np.uint8, offset=16).reshape(-1, 1, 28, 28)
        ts = [torch.from_numpy(x.copy())]
        if lab:
            ts.append(torch.from_numpy(np.frombuffer(read(lab[0]), np.uint8, offset=8).astype(np.int64)))
        return DataSource(ts, source=str(idx[0]))
    from PIL import Image

    classes = sorted(d.name for d in p.iterdir() if d.is_dir())
    files = [(f, k) for k, c in enumerate(classes) for f in sorted((p / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ConfigError(f"--data {p}: no images found (expected {p}/<class>/*.png|jpg, or IDX files)")
    first = Image.open(files[0][0])
    mode = "L" if first.mode in ("L", "1", "I", "I;16") else "RGB"
    size = first.size
    arrs = [np.asarray(Image.open(f).convert(mode).resize(size)) for f, _ in files]
    x = np.stack(arrs)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return DataSource([torch.from_numpy(np.ascontiguousarray(x)), torch.tensor([k for _, k in files])],
                      source=str(p))
