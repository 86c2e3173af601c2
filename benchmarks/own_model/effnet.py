"""The walk's CNN factory, as a user would write one: EfficientNet-Lite0's architecture from the
efficientnet-lite-pytorch package, built with arguments (`--arch benchmarks/own_model/effnet.py:build --arch-args
num_classes=1000`); the weights come from the state dict file edgekit is given."""
from __future__ import annotations

from efficientnet_lite_pytorch import EfficientNet


def build(num_classes: int, name: str = "efficientnet-lite0", dropout_rate: float = 0.2, features: bool = False,
          drop_connect_rate: float = 0.2):
    """No default for num_classes: the head must match the state dict. features=true: (logits, pooled features)
    outputs, as edgekit's built-in efficientnet_lite0 exports them (state dict keys then start with `net.`), so the
    fashion-probe task reads the features of the artifact. dropout_rate / drop_connect_rate only act while a method
    fine-tunes (0 for a distillation that should see the deterministic network)."""
    net = EfficientNet.from_name(name, num_classes=num_classes, dropout_rate=dropout_rate,
                                 drop_connect_rate=drop_connect_rate).eval()
    if features:
        from edgekit.models.real import EfficientNetWithFeatures

        return EfficientNetWithFeatures(net).eval()
    return net
