"""The walk's CNN factory, as a user would write one: EfficientNet-Lite0's architecture from the
efficientnet-lite-pytorch package, built with arguments (`--arch benchmarks/own_model/effnet.py:build --arch-args
num_classes=1000`); the weights come from the state dict file edgekit is given."""
from __future__ import annotations

from efficientnet_lite_pytorch import EfficientNet


def build(num_classes: int, name: str = "efficientnet-lite0", dropout_rate: float = 0.2) -> EfficientNet:
    """No default for num_classes: the head must match the state dict."""
    return EfficientNet.from_name(name, num_classes=num_classes, dropout_rate=dropout_rate).eval()
