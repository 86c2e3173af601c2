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
    if p.suffix in (".txt", ".md", ".text"):
        text = p.read_text(errors="replace")
        parts = [t.strip() for t in text.split("\n\n") if t.strip()]
        return DataSource(texts=parts, source=str(p))
    raise ConfigError(f"--data {p}: unsupported format '{p.suffix}'; use .npy, .npz (arrays) or .txt (text)")
