"""Floating-point (ExMy) quantizer with a real-valued exponent bias (LLM-FP4 spec §2), in "unit" form.

Every ExMy grid with bias b is an integer set times a unit u = 2^(1-M-b) (spec §9): subnormals are 1..2^M-1,
binade p>=1 holds 2^(p-1)·(2^M..2^(M+1)-1), so the largest code is (2^(M+1)-1)·2^(2^E-2) (12 for E2M1, 7 for
E1M2, 64 for E3M0). We quantize as Q_b(x) = u·Qint(x/u): the integer codes come out exactly, weights become
codes·u bit for bit (the WeightCode contract), and the same ops export to ONNX (Div, Clip, Mul, Sub, Abs, Less, Round,
Where: see fp_codes).
"""
from __future__ import annotations

import math
import re

import torch

Format = tuple[int, int]  # (E, M)


def formats_for(bits: int) -> list[Format]:
    """Candidate (E, M) splits of an n-bit float: 4 bits -> E3M0, E2M1, E1M2; 8 bits -> E5M2 .. E1M6."""
    return [(bits - 1 - m, m) for m in range(max(0, bits - 6), bits - 1)]


def default_format(bits: int) -> Format:
    """Starting format of the search and the MinMax format: E2M1 for 4 bits, E4M3 for 8 bits."""
    return (2, 1) if bits <= 4 else ((4, 3) if bits == 8 else formats_for(bits)[len(formats_for(bits)) // 2])


def fmt_name(f: Format) -> str:
    """'E2M1' style name."""
    return f"E{f[0]}M{f[1]}"


def parse_format(name: str) -> Format:
    """'E2M1' -> (2, 1)."""
    m = re.fullmatch(r"E(\d)M(\d)", name.strip().upper())
    if not m:
        raise ValueError(f"bad FP format '{name}' (write e.g. E2M1)")
    return int(m.group(1)), int(m.group(2))


def max_code(E: int, M: int) -> float:
    """Largest integer code (in units u) of an ExMy grid."""
    return float((2 ** (M + 1) - 1) * 2 ** (2 ** E - 2))


def xmax(E: int, M: int, b: float | torch.Tensor):
    """Largest representable magnitude for bias b: (2 - 2^-M)·2^(2^E - 1 - b)."""
    return (2 - 2.0 ** -M) * 2.0 ** (2 ** E - 1 - b)


def bias_from_max(maxval: torch.Tensor, E: int, M: int) -> torch.Tensor:
    """Real exponent bias that makes xmax equal maxval (clamped at 1e-8 so empty channels stay finite)."""
    m = maxval.to(torch.float64).clamp_min(1e-8)
    return 2 ** E - torch.log2(m) + math.log2(2 - 2.0 ** -M) - 1


def unit(b: torch.Tensor, M: int) -> torch.Tensor:
    """Grid unit u = 2^(1 - M - b) as float32 (the DequantizeLinear scale)."""
    return torch.exp2(1 - M - b.to(torch.float64)).to(torch.float32)


def fp_codes(y: torch.Tensor, E: int, M: int) -> torch.Tensor:
    """Round y (already divided by u) to the nearest ExMy integer code, half to even; float tensor of integers.

    Codes below 2^M are integers (subnormals and the first binade: step 1): plain rounding. Above, the step is
    2^(e-M), i.e. y rounded to M+1 significant bits, done exactly by Veltkamp splitting: with s = 2^(p-1-M) + 1 (p
    the dtype's significand bits), t = s·y, fl(t - fl(t - y)) is y rounded to nearest-even at M+1 bits. Three
    elementwise ops instead of log2/floor/exp2: the exported graph runs Mul, Sub, Sub, Abs, Less, Round, Where (no
    transcendental ops); tested against the log2 definition over random values, every grid point and every tie.
    """
    c = max_code(E, M)
    y = y.clamp(-c, c)
    s = float(2 ** (round(-math.log2(torch.finfo(y.dtype).eps)) - M) + 1)
    t = y * s
    return torch.where(y.abs() < 2 ** M, torch.round(y), t - (t - y))


def fp_codes_log2(y: torch.Tensor, E: int, M: int) -> torch.Tensor:
    """The definition: code = round(y / 2^max(floor(log2|y|) - M, 0)) · step (reference for tests)."""
    y = y.clamp(-max_code(E, M), max_code(E, M))
    a = y.abs()
    e = torch.floor(torch.log2(a))
    e = e - (a < torch.exp2(e)).to(y.dtype) + (a >= torch.exp2(e + 1)).to(y.dtype)
    step = torch.exp2(torch.clamp(e - M, min=0.0))
    return torch.round(y / step) * step


def int_codes(y: torch.Tensor, qmax: float) -> torch.Tensor:
    """Symmetric uniform integer codes (levels -qmax..qmax)."""
    return torch.clamp(torch.round(y), -qmax, qmax)


def fp_quant(x: torch.Tensor, E: int, M: int, b: torch.Tensor | float) -> torch.Tensor:
    """Q_{E,M,b}(x) for a real (broadcastable) bias b, in x's dtype."""
    b = torch.as_tensor(b, dtype=x.dtype)
    u = torch.exp2(1 - M - b)
    return fp_codes(x / u, E, M) * u


def quant_units(x: torch.Tensor, u: torch.Tensor, E: int, M: int, kind: str = "fp", qmax: float = 7.0) -> torch.Tensor:
    """Fake-quantize x on the grid of unit u (FP ExMy or symmetric INT): what activation quantizers run."""
    y = x / u
    q = fp_codes(y, E, M) if kind == "fp" else int_codes(y, qmax)
    return q * u


def grid_values(E: int, M: int, b: float) -> torch.Tensor:
    """All distinct values of the ExMy grid with bias b (float64), for tests and docs."""
    pos = [float(k) for k in range(1, 2 ** M)]
    for p in range(1, 2 ** E):
        pos += [2.0 ** (p - 1) * (2 ** M + k) for k in range(2 ** M)]
    u = 2.0 ** (1 - M - b)
    t = torch.tensor(sorted(set(pos)), dtype=torch.float64) * u
    return torch.cat([-t.flip(0), torch.zeros(1, dtype=torch.float64), t])
