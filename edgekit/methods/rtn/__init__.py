"""Naive baseline: round-to-nearest symmetric per-channel weight quantization of Conv/Linear layers.

This is what a user gets with no method at all; every paper method is compared against it. Weights stay
on their integer grid (float values) and the codes are recorded, so the ONNX export stores real int8/int4.
"""
from __future__ import annotations

import re
import time
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from ...flops import count_params
from ...quant.codes import attach_codes, symmetric_per_channel
from ..common import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "none"
SUMMARY = "Baseline: round-to-nearest per-channel symmetric weight quantization (int8/int4), data-free"
MODELS = ("cnn", "encoder", "decoder")


class Config(BaseModel, extra="forbid"):
    """Options of the RTN baseline."""

    bits: int = Field(8, ge=2, le=8, description="weight bits (4 or 8 give real int4/int8 storage)")
    skip: list[str] = Field(default_factory=list, description="regexes of module names to leave in float")


def apply(model: nn.Module, cfg: Config, data=None) -> tuple[nn.Module, MethodReport]:
    """Quantize every Conv/Linear weight in place and record its codes."""
    t0 = time.perf_counter()
    rep = MethodReport("rtn", params_before=count_params(model))
    qw = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        if any(re.search(p, name) for p in cfg.skip):
            rep.layers_skipped[name] = "matches a skip pattern"
            continue
        code = symmetric_per_channel(mod.weight.data, cfg.bits, axis=0)
        with torch.no_grad():
            mod.weight.copy_(code.dequantize())
        attach_codes(model, f"{name}.weight", code)
        rep.layers_touched.append(name)
        qw += mod.weight.numel()
    total = rep.params_after = count_params(model)
    rep.bits_per_weight = (qw * cfg.bits + (total - qw) * 32) / max(total, 1)
    rep.seconds = time.perf_counter() - t0
    return model, rep
