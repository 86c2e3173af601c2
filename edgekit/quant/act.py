"""Activation-quantizer records: which linear inputs a method quantized, and how (methods write, export reads).

A method that fake-quantizes the input of `nn.Linear` layers records one `ActQ` per layer (state-dict prefix of the
linear) on the root module with `attach_act_records`; `edgekit.export.fp4_matmul` turns those layers into exact
integer MatMuls from these records and the weight codes, never by knowing which method made them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .fp import Format

_ACT_ATTR = "_edgekit_fp_act"
_INT_ATTR = "_edgekit_fp_int_matmul"


@dataclass
class ActQ:
    """How one linear's input is quantized: per-tensor or per-channel unit, format, and the FPQ shifts."""

    kind: str  # "fp" | "int"
    fmt: Format
    unit: torch.Tensor  # (1,) or (in,) float32
    rho: float = 0.0  # tensor-wise bias (fp)
    shift: torch.Tensor | None = None  # integer k_j (fpq)
    qmax: float = 7.0

    def cpu(self) -> ActQ:
        return ActQ(self.kind, self.fmt, self.unit.cpu(), self.rho, None if self.shift is None else self.shift.cpu(),
                    self.qmax)


def attach_act_records(model: nn.Module, records: dict[str, ActQ], int_matmul: bool) -> None:
    """Record the activation quantizers on the root module; `int_matmul` asks export for integer MatMuls."""
    object.__setattr__(model, _ACT_ATTR, dict(records))
    object.__setattr__(model, _INT_ATTR, bool(int_matmul and records))


def act_records(model: nn.Module) -> dict[str, ActQ]:
    """Activation quantizers recorded on this module (empty dict when none)."""
    return dict(getattr(model, _ACT_ATTR, {}))


def int_matmul_records(model: nn.Module, force: bool = False) -> dict[str, ActQ]:
    """act_records of the model (or of the first submodule that has them, e.g. inside a wrapper) when the method
    asked for integer MatMuls (or always, with force)."""
    for m in model.modules():
        if getattr(m, _INT_ATTR, False) or (force and getattr(m, _ACT_ATTR, None)):
            return act_records(m)
    return {}
