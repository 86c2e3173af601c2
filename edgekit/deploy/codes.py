"""A method's weight codes in the INT8 file: given to the quantizer as exact per-channel scales, then checked.

A quantizing method leaves each weight on its grid w = s_c·c (+ offset) and records the codes (edgekit.quant);
the exporter folds BatchNorm into conv weights, so the float ONNX holds f_c·s_c·c per output channel c. Decisions:
- The int8 weight scale of each coded weight is set to |f_c|·s_c through onnxruntime.quantization's
  `TensorQuantOverrides` (per-channel scale, zero point 0), so rounding returns ±c exactly for every symmetric grid
  of <= 8 bits (RTN 4/6/8, UDFC's default mid-tread grid), instead of MinMax's max|w|/127, which equals |f_c|·s_c
  only when the channel's largest code is ±127 (8-bit grids). f_c comes from the float weights (least squares per
  channel, accepted only when w = f_c·dequant(c) within 1e-5 relative); a weight that does not match is left to
  MinMax and reported.
- UDFC's paper grid (grid=midrise) w = s·(c + 1/2) = (s/2)·(2c + 1) has no zero level: with scale |f_c|·s_c/2 the
  odd numbers 2c + 1 are its exact int8 codes while they fit ±127 (<= 7 bits). At 8 bits they reach ±255: MinMax
  re-rounds those weights once (each moves by up to half a step). Measured on EfficientNet-Lite0 (data-free
  ranges, ORT, logits cosine to the float model over 64 Fashion-MNIST images): mid-rise 7-bit 0.9974 mean / 0.992
  worst, mid-rise 8-bit 0.958 / 0.914, which validation rejects.
- `check_codes` reads the written file back: by name (`<param>_quantized`), else by value (the exporter renames
  weights it transposes). The only channels allowed to differ are those whose scale ORT widened so that their
  int32 bias fits (BN-folded weights ~1e-8 next to their bias: near-dead channels); they are counted and named.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..quant import WeightCode

REL_TOL = 1e-5


def _midrise(code: WeightCode) -> bool:
    """A mid-rise grid (offset = scale/2) whose odd codes 2c + 1 fit int8's symmetric range."""
    if code.offset is None:
        return False
    off, sc, c = code.offset.double(), code.scale.double(), code.codes
    return bool(torch.allclose(off, sc / 2, rtol=1e-6)) and int(c.min()) >= -64 and int(c.max()) <= 63


def _target(code: WeightCode) -> np.ndarray:
    """The integers the file should hold per output channel ([out, -1]): codes, or 2c + 1 for a mid-rise grid."""
    c = code.codes.numpy().astype(np.int64)
    c = c.reshape(len(c), -1)
    return 2 * c + 1 if _midrise(code) else c


def _unit(code: WeightCode) -> np.ndarray | None:
    """Per-channel value of one int8 step for these codes, or None when they do not fit int8 exactly."""
    if code.axis not in (0, None) or (code.offset is not None and not _midrise(code)):
        return None
    if int(np.abs(_target(code)).max()) > 127:
        return None
    n = code.codes.shape[0]
    s = code.scale.double().numpy().reshape(-1)
    s = np.full(n, float(s[0])) if s.size == 1 else s
    return s / 2 if _midrise(code) else s


def _factor(w: np.ndarray, d: np.ndarray) -> np.ndarray | None:
    """Per-channel f with w == f·d (within REL_TOL of max|w|), or None."""
    w2, d2 = w.reshape(len(w), -1).astype(np.float64), d.reshape(len(d), -1).astype(np.float64)
    den = (d2 * d2).sum(1)
    f = np.where(den > 0, (w2 * d2).sum(1) / np.where(den > 0, den, 1), 1.0)
    return f if np.abs(w2 - f[:, None] * d2).max() <= REL_TOL * max(np.abs(w2).max(), 1e-30) else None


def exact_scales(float_path: Path, codes: dict[str, WeightCode]) -> dict[str, tuple[str, int, np.ndarray]]:
    """param -> (float ONNX initializer, its channel axis, int8 scale per channel) for every code that fits int8."""
    inits = {i.name: i for i in onnx.load(str(float_path)).graph.initializer}
    by_size: dict[int, list[str]] = {}
    for n, i in inits.items():
        by_size.setdefault(int(np.prod(i.dims)) if i.dims else 1, []).append(n)
    out: dict[str, tuple[str, int, np.ndarray]] = {}
    taken: set[str] = set()
    for name, code in codes.items():
        unit = _unit(code)
        if unit is None:
            continue
        d = code.dequantize().numpy()
        for cand in ([name] if name in inits else []) + by_size.get(d.size, []):
            if cand in taken or inits[cand].data_type != onnx.TensorProto.FLOAT:
                continue
            w = numpy_helper.to_array(inits[cand])
            for axis, wa in ((0, w), (w.ndim - 1, w.T if w.ndim == 2 else None)):
                f = _factor(wa, d) if wa is not None and wa.shape == d.shape else None
                if f is not None:
                    scale = np.abs(f) * unit
                    out[name] = (cand, axis, np.where(scale > 0, scale, np.where(unit > 0, unit, 1.0)))
                    taken.add(cand)
                    break
            if name in out:
                break
    return out


def overrides(scales: dict[str, tuple[str, int, np.ndarray]]) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides entries: one dict per channel, the axis in the first (onnxruntime's format)."""
    out = {}
    for init, axis, sc in scales.values():
        out[init] = [{"axis": axis, "scale": float(sc[0]), "zero_point": 0}] + [
            {"scale": float(v), "zero_point": 0} for v in sc[1:]]
    return out


def _same_channels(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per output channel: equal up to sign (a folded BatchNorm gamma < 0 flips a channel)."""
    q = q.reshape(len(q), -1)
    return np.all(q == t, axis=1) | np.all(q == -t, axis=1)


def _find(inits: dict[str, onnx.TensorProto], name: str, code: WeightCode) -> tuple[np.ndarray, str] | None:
    """The file's int8 weight for parameter `name` in the codes' layout and its base name: by name, else by value."""
    shape, t = tuple(code.codes.shape), _target(code)
    own = f"{name}_quantized"
    best: tuple[float, np.ndarray, str] | None = None
    for k in [own] + [k for k in inits if k.endswith("_quantized") and k != own]:
        init = inits.get(k)
        if init is None or init.data_type != onnx.TensorProto.INT8 or tuple(init.dims) not in (shape, shape[::-1]):
            continue
        raw = numpy_helper.to_array(init).astype(np.int64)
        for q in (raw, raw.T if raw.ndim == 2 else None):
            if q is None or q.shape != shape:
                continue
            if k == own:
                return q, k[: -len("_quantized")]
            frac = float(_same_channels(q, t).mean())
            if frac >= 0.5 and (best is None or frac > best[0]):
                best = (frac, q, k[: -len("_quantized")])
    return (best[1], best[2]) if best else None


def check_codes(qdq_path: Path, codes: dict[str, WeightCode], float_path: Path | None = None) -> dict[str, Any]:
    """Do the file's int8 weights equal the method's codes (up to a per-channel sign from a folded BN gamma)?"""
    if not codes:
        return {"checked": 0, "note": "the method recorded no integer codes"}
    inits = {i.name: i for i in onnx.load(str(qdq_path)).graph.initializer}
    expected = exact_scales(float_path, codes) if float_path else {}
    exact, differ, missing, kept = [], {}, [], []
    n_ch = n_same = n_bias = 0
    for name, code in codes.items():
        found = _find(inits, name, code)
        if found is None:
            (kept if name in inits or name in expected else missing).append(name)
            continue
        q, base = found
        t = _target(code)
        same = _same_channels(q, t)
        n_ch, n_same = n_ch + len(same), n_same + int(same.sum())
        diff = int(np.abs(np.abs(q.reshape(len(q), -1)) - np.abs(t)).max())
        if _unit(code) is None:
            differ[name] = {"reason": "not an int8 grid: a mid-rise grid (w = s·(c + 1/2)) of 8 bits, whose odd codes "
                            "2c + 1 reach ±255, or codes beyond ±127; re-rounded once by MinMax (use <= 7 bits "
                            "for mid-rise)", "max_code_difference": diff}
            continue
        widened = np.zeros(len(same), bool)
        if name in expected and f"{base}_scale" in inits:
            s_file = numpy_helper.to_array(inits[f"{base}_scale"]).astype(np.float64).reshape(-1)
            widened = s_file > expected[name][2] * (1 + 1e-5)
        bad = ~same & ~widened
        n_bias += int((~same & widened).sum())
        if bad.any():
            differ[name] = {"reason": f"{int(bad.sum())} of {len(same)} channels differ", "max_code_difference": diff}
        else:
            exact.append(name)
    rec = {"checked": len(codes), "tensors_ok": len(exact), "channels": n_ch, "channels_equal": n_same,
           "all_exact": not differ and not missing and n_same == n_ch,
           "exact_except_bias_widened": not differ and not missing, "not_exact": differ, "kept_float": kept,
           "not_found": missing}
    if n_bias:
        rec["bias_widened_channels"] = n_bias
        rec["note"] = (f"{n_bias} channels got a wider weight scale from ORT so that their int32 bias fits (weights "
                       "tiny next to the bias); every other channel equals the method's codes")
    return rec
