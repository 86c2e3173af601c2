"""Naive baseline: global unstructured magnitude pruning of Conv/Linear weights.

Zeros do not shrink the dense file or speed up dense kernels; this baseline exists so that structured methods
can show what physical pruning buys over it at the same sparsity.
"""
from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from ...flops import count_params
from ..common import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "none"
SUMMARY = "Baseline: global unstructured magnitude pruning (zeros only; no size or speed gain)"
MODELS = ("cnn", "encoder", "decoder")


class Config(BaseModel, extra="forbid"):
    """Options of the magnitude-pruning baseline."""

    sparsity: float = Field(0.3, ge=0.0, lt=1.0, description="fraction of Conv/Linear weights set to zero")


def apply(model: nn.Module, cfg: Config, data=None) -> tuple[nn.Module, MethodReport]:
    """Zero the globally smallest |w| across all Conv/Linear weights."""
    t0 = time.perf_counter()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    rep = MethodReport("magnitude", params_before=count_params(model))
    if cfg.sparsity > 0 and layers:
        flat = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
        k = int(cfg.sparsity * flat.numel())
        thr = flat.kthvalue(max(k, 1)).values if k > 0 else flat.min() - 1
        with torch.no_grad():
            for n, m in layers:
                m.weight.mul_((m.weight.abs() > thr).to(m.weight.dtype))
                rep.layers_touched.append(n)
    rep.params_after = count_params(model)
    nz = sum(int((m.weight != 0).sum()) for _, m in layers)
    rep.extra["sparsity_achieved"] = 1 - nz / max(sum(m.weight.numel() for _, m in layers), 1)
    rep.seconds = time.perf_counter() - t0
    return model, rep
