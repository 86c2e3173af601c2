"""The bundled demo model: a small CNN for scikit-learn's 8x8 digits (no download), weights shipped as safetensors.

conv-BN-ReLU blocks feeding a linear head through pooling, so every method (pruning, quantization) has real work
to do on it. Train it again with `python scripts/train_demo.py`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("digits_cnn.safetensors")
INPUT_SHAPE = (1, 1, 8, 8)


class DigitsCNN(nn.Module):
    """conv(1->16)-BN-ReLU, conv(16->32)-BN-ReLU, pool to 4x4, conv(32->32)-BN-ReLU, global pool, linear(32->10)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * w)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """load_digits() as (x_train, y_train, x_test, y_test); x in [0, 1], shape (N, 1, 8, 8); fixed 75/25 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.75 * len(x))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def load_demo_model() -> DigitsCNN:
    """The trained demo CNN in eval mode."""
    from safetensors.torch import load_file

    m = DigitsCNN()
    m.load_state_dict(load_file(str(WEIGHTS)))
    return m.eval()


def build() -> DigitsCNN:
    """Factory for `--arch edgekit.models.digits_cnn:build` (untrained, to load a state dict into)."""
    return DigitsCNN()
