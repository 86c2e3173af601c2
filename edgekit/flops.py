"""Parameter and MAC counts of a torch module from its real shapes."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass on `example_inputs`, from the real shapes.

    Uses torch's FlopCounterMode, which sees the aten ops (convolution, mm/addmm/bmm, attention) whatever
    module produced them, so torch.export programs (no nn.Conv2d left) and attention matmuls count too.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*example_inputs)
    return int(fc.get_total_flops() // 2)


def macs_by_module(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> tuple[int, dict[str, int]]:
    """(total MACs, MACs per module qualified name) of one forward pass, by the same FlopCounterMode; a module's
    figure includes its children's."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*example_inputs)
    root = type(model).__name__ + "."
    per = {k[len(root):]: int(sum(v.values()) // 2) for k, v in fc.get_flop_counts().items() if k.startswith(root)}
    return int(fc.get_total_flops() // 2), per
