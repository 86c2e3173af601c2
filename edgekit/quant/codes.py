"""Weight codes and their storage: the contract between quantizing methods and exporters (no method logic).

A method leaves each quantized weight exactly on its grid (float values) and records a `WeightCode` for it:
``weight == (codes - zero_point) * scale + offset`` with ``scale``/``offset`` broadcast along ``axis``.
Group-wise codes (``group_size`` g, 2-D weights [out, in] only): ``scale`` is [out, in / g], one scale per g
consecutive input weights of an output channel (what runtimes call block-wise: ONNX DequantizeLinear-21
``block_size``, ONNX Runtime ``MatMulNBits``, OpenVINO group-wise INT4).
After the float ONNX export, `edgekit.export.qdq` swaps those initializers for integer initializers +
DequantizeLinear (+ Add for a non-zero offset, as mid-rise grids need), after checking the equality.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

_ATTR = "_edgekit_weight_codes"


@dataclass
class WeightCode:
    """Integer codes of one weight tensor and how to turn them back into floats."""

    codes: torch.Tensor  # integer-valued tensor with the weight's shape
    scale: torch.Tensor  # 0-d (per tensor) or 1-d along `axis`
    axis: int | None = 0
    bits: int = 8  # storage: int4 when bits <= 4 and the codes fit, else int8
    offset: torch.Tensor | None = None  # same shape as scale; None means 0
    group_size: int | None = None  # scale [out, in / group_size] for a 2-D weight (module doc)

    def __post_init__(self) -> None:
        if self.group_size is not None:
            c, s = self.codes, self.scale
            if c.dim() != 2 or self.axis != 0 or self.group_size < 1 or c.shape[1] % self.group_size \
                    or tuple(s.shape) != (c.shape[0], c.shape[1] // self.group_size):
                raise ValueError(f"group-wise codes need a 2-D weight whose input size is a multiple of the group "
                                 f"({tuple(c.shape)}, group {self.group_size}) and scale [out, in/group] "
                                 f"(got {tuple(s.shape)})")

    def _bcast(self, t: torch.Tensor) -> torch.Tensor:
        if self.group_size is not None:
            return t.repeat_interleave(self.group_size, dim=1)
        if t.dim() == 0 or self.axis is None:
            return t
        shape = [1] * self.codes.dim()
        shape[self.axis] = -1
        return t.reshape(shape)

    def dequantize(self) -> torch.Tensor:
        """Float weight the codes stand for (float32)."""
        w = self.codes.to(torch.float32) * self._bcast(self.scale.to(torch.float32))
        if self.offset is not None:
            w = w + self._bcast(self.offset.to(torch.float32))
        return w

    def storage_bits(self) -> int:
        """Bits per stored code, as export/qdq.py stores them: b = 1..3 if bits <= 3 and the codes take at most 2^bits
        distinct values (b bit planes of table indices; tensors of 64+ weights); 4 if bits <= 4 and the codes fit
        int4 or take at most 16 values; 8 if they fit int8 or take at most 256 distinct values (uint8 index into a
        table: 8-bit FP grids whose integer codes exceed int8); else 32 (the weight stays float)."""
        lo, hi = int(self.codes.min()), int(self.codes.max())
        n_vals = torch.unique(self.codes).numel()
        if self.group_size is not None:  # group-wise scales are stored with int4/int8 DequantizeLinear only
            return 4 if self.bits <= 4 and -8 <= lo and hi <= 7 else 8 if -128 <= lo and hi <= 127 else 32
        if self.bits <= 3 and n_vals <= 1 << self.bits and self.codes.numel() >= 64:
            return max(1, (n_vals - 1).bit_length())
        if self.bits <= 4 and (-8 <= lo and hi <= 7 or torch.unique(self.codes).numel() <= 16):
            return 4  # int4, or uint4 indices into a 16-entry table (FP4 E2M1/E3M0)
        if -128 <= lo and hi <= 127 or torch.unique(self.codes).numel() <= 256:
            return 8
        return 32


def attach_codes(model: nn.Module, name: str, code: WeightCode) -> None:
    """Record the codes of parameter `name` (a state-dict key) on the root module."""
    if not hasattr(model, _ATTR):
        object.__setattr__(model, _ATTR, {})
    getattr(model, _ATTR)[name] = code


def get_codes(model: nn.Module) -> dict[str, WeightCode]:
    """All recorded weight codes of a model (empty dict when none)."""
    return dict(getattr(model, _ATTR, {}))


def clear_codes(model: nn.Module) -> None:
    """Drop recorded codes (after a structural change that invalidates them)."""
    if hasattr(model, _ATTR):
        getattr(model, _ATTR).clear()


def save_codes(codes: dict[str, WeightCode], path: Path) -> None:
    """Write codes as safetensors + a JSON sidecar (axis/bits)."""
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for name, c in codes.items():
        lo, hi = int(c.codes.min()), int(c.codes.max())
        dt = torch.int16 if -(1 << 15) <= lo and hi < (1 << 15) else torch.int64  # E4M3/E5M2 codes exceed int16
        tensors[f"{name}::codes"] = c.codes.to(dt).contiguous()
        tensors[f"{name}::scale"] = c.scale.to(torch.float32).contiguous()
        if c.offset is not None:
            tensors[f"{name}::offset"] = c.offset.to(torch.float32).contiguous()
        meta[name] = {"axis": c.axis, "bits": c.bits, **({"group_size": c.group_size} if c.group_size else {})}
    save_file(tensors, str(path))
    Path(str(path) + ".json").write_text(json.dumps(meta))


def load_codes(path: Path) -> dict[str, WeightCode]:
    """Read what `save_codes` wrote."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    meta = json.loads(Path(str(path) + ".json").read_text())
    return {
        n: WeightCode(tensors[f"{n}::codes"], tensors[f"{n}::scale"], m["axis"], m["bits"],
                      tensors.get(f"{n}::offset"), m.get("group_size"))
        for n, m in meta.items()
    }


def symmetric_per_channel(w: torch.Tensor, bits: int, axis: int = 0) -> WeightCode:
    """Round-to-nearest symmetric per-channel codes (levels -(2^(b-1)-1)..2^(b-1)-1)."""
    qmax = 2 ** (bits - 1) - 1
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.detach().abs().amax(dim=dims) if dims else w.detach().abs()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).to(torch.float32)
    shape = [1] * w.dim()
    shape[axis] = -1
    codes = torch.clamp(torch.round(w.detach() / scale.reshape(shape)), -qmax, qmax)
    return WeightCode(codes.to(torch.int16), scale, axis, bits)


def symmetric_per_group(w: torch.Tensor, bits: int, group_size: int) -> WeightCode:
    """Round-to-nearest symmetric codes with one scale per `group_size` consecutive input weights of each output
    channel of a 2-D weight [out, in] (in a multiple of group_size); levels as symmetric_per_channel."""
    qmax = 2 ** (bits - 1) - 1
    out, n_in = w.shape
    g = w.detach().reshape(out, n_in // group_size, group_size)
    amax = g.abs().amax(dim=2)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).to(torch.float32)
    codes = torch.clamp(torch.round(g / scale.unsqueeze(2)), -qmax, qmax).reshape(out, n_in)
    return WeightCode(codes.to(torch.int16), scale, 0, bits, group_size=group_size)
