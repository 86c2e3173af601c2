"""Naive baseline: unstructured magnitude pruning of Conv/Linear weights.

Zeros do not shrink the dense file or speed up dense kernels; this baseline exists so that structured methods
can show what physical pruning buys over it at the same sparsity.

Two scopes (a decision of ours, not from a paper):
- `scope=all` (default): one global threshold over every Conv/Linear weight, the classic global magnitude pruning.
- `scope=ffn`: only the FFN linears that `structured_ffn` replaces (its default name patterns, the first
  `dense_first` blocks kept dense as there), each pruned on its own to `sparsity`: the unstructured baseline at
  structured_ffn's parameter count (`param_ratio = 1 - sparsity`). Per layer rather than global so that every
  layer keeps the same fraction, as every structured layer does.
"""
from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from ...errors import ConfigError
from ...flops import count_params
from ..common import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "none"
SUMMARY = "Baseline: unstructured magnitude pruning (zeros only; no size or speed gain)"
MODELS = ("cnn", "encoder", "decoder")


class Config(BaseModel, extra="forbid"):
    """Options of the magnitude-pruning baseline."""

    sparsity: float = Field(0.3, ge=0.0, lt=1.0, description="fraction of the pruned weights set to zero")
    scope: Literal["all", "ffn"] = Field(
        "all", description="all: every Conv/Linear weight, one global threshold; ffn: the FFN linears structured_ffn "
                           "replaces, each layer on its own (its baseline at param_ratio = 1 - sparsity)")
    dense_first: int = Field(1, ge=0, description="scope=ffn: leading blocks whose FFN stays dense (as structured_ffn)")


def _ffn_layers(model: nn.Module, dense_first: int) -> list[tuple[str, nn.Linear]]:
    from ..structured_ffn import DEFAULT_PATTERNS, find_ffn

    found = find_ffn(model, DEFAULT_PATTERNS)
    blocks = sorted({b for _, _, b in found})[dense_first:]
    layers = [(n, lin) for n, lin, b in found if b in blocks]
    if not layers:
        raise ConfigError(f"scope=ffn found no FFN linears past the first {dense_first} block(s) (structured_ffn's "
                          "BERT/Llama/GPT name patterns); use scope=all for this model")
    return layers


def _prune_layer(w: torch.Tensor, sparsity: float) -> None:
    """Keep the round((1 - sparsity)·numel) largest |w| of one tensor, in place."""
    keep = round((1 - sparsity) * w.numel())
    if keep >= w.numel():
        return
    thr = w.abs().flatten().kthvalue(w.numel() - keep).values
    w.mul_((w.abs() > thr).to(w.dtype))


def apply(model: nn.Module, cfg: Config, data=None) -> tuple[nn.Module, MethodReport]:
    """Zero the smallest |w|: globally across all Conv/Linear weights, or per FFN layer (scope=ffn)."""
    t0 = time.perf_counter()
    if cfg.scope == "ffn":
        layers = _ffn_layers(model, cfg.dense_first)
    else:
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    rep = MethodReport("magnitude", params_before=count_params(model))
    if cfg.sparsity > 0 and layers:
        with torch.no_grad():
            if cfg.scope == "ffn":
                for _, m in layers:
                    _prune_layer(m.weight.data, cfg.sparsity)
            else:
                flat = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
                k = int(cfg.sparsity * flat.numel())
                thr = flat.kthvalue(max(k, 1)).values if k > 0 else flat.min() - 1
                for _, m in layers:
                    m.weight.mul_((m.weight.abs() > thr).to(m.weight.dtype))
        rep.layers_touched = [n for n, _ in layers]
    rep.params_after = count_params(model)
    nz = sum(int((m.weight != 0).sum()) for _, m in layers)
    rep.extra["sparsity_achieved"] = 1 - nz / max(sum(m.weight.numel() for _, m in layers), 1)
    rep.extra["scope"] = cfg.scope
    rep.seconds = time.perf_counter() - t0
    return model, rep
