"""Parameter and MAC counts of a torch module from its real shapes (forward hooks on Conv/Linear)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of Conv/Linear layers for one forward pass on `example_inputs`."""
    total = [0]

    def conv_hook(m: nn.Conv2d | nn.Conv1d, _inp, out):
        k = 1
        for s in m.kernel_size:
            k *= s
        total[0] += out.numel() * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Linear, _inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return total[0]
