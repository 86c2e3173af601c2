"""Reference of the shift product the paper's speed claim rests on (spec §7): x·(±2^p) as an exponent add.

For fp16 x, x·2^p is `bits(x) + (p << 10)` (the exponent field starts at bit 10) and a negative weight flips the
sign bit (`^ 0x8000`). Valid only for normal x whose result stays normal; x = 0 (common after ReLU) would become
2^(p-15), and subnormals are wrong, so they are masked to x·w computed the ordinary way (0 stays 0). This is a
numpy model of what a shift-capable kernel computes, used to check that DenseShift weights need no multiplier;
it is not used by the export (runtimes run the float/int8 Conv).
"""
from __future__ import annotations

import numpy as np


def shift_mul_fp16(x: np.ndarray, sign: np.ndarray, p: np.ndarray) -> np.ndarray:
    """x·sign·2^p for fp16 x by integer ops on the bit pattern; zeros/subnormals/overflow masked to the exact product."""
    x = np.asarray(x, np.float16)
    bits = x.view(np.uint16).astype(np.int32)
    exp = (bits >> 10) & 0x1F
    p = np.asarray(p, np.int32)
    out = (bits + (p << 10)) ^ np.where(np.asarray(sign) < 0, 0x8000, 0)
    safe = (exp > 0) & (exp + p < 31)  # normal input, normal (finite) result
    exact = (x.astype(np.float32) * np.asarray(sign, np.float32) * np.exp2(p.astype(np.float32))).astype(np.float16)
    return np.where(safe, (out & 0xFFFF).astype(np.uint16).view(np.float16), exact)
