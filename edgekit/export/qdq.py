"""Replace float initializers that a method left on an integer grid by integer initializers + DequantizeLinear.

Matching is by value, not trust: the exported initializer of parameter P must equal f_c * dequant(codes) for a
per-output-channel factor f_c (f = 1 normally; the exporter folds BatchNorm into conv weights, which gives
f_c = gamma_c / sigma_c). The factor goes into a per-channel DequantizeLinear scale (axis 0), so codes stay
exact. Transposed copies (Linear exported as MatMul) are matched too. Anything that does not match is left
in float and listed, never silently approximated.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..methods._quant import WeightCode

REL_TOL = 1e-5


def _channel_factor(w: np.ndarray, deq: np.ndarray) -> np.ndarray | None:
    """Per-axis-0 factor f with w == f * deq (within REL_TOL), or None."""
    if w.shape != deq.shape:
        return None
    w2, d2 = w.reshape(w.shape[0], -1).astype(np.float64), deq.reshape(deq.shape[0], -1).astype(np.float64)
    den = (d2 * d2).sum(1)
    f = np.where(den > 0, (w2 * d2).sum(1) / np.where(den > 0, den, 1), 1.0)
    err = np.abs(w2 - f[:, None] * d2).max()
    return f if err <= REL_TOL * max(np.abs(w2).max(), 1e-12) else None


def _int_tensor(name: str, codes: np.ndarray, bits: int) -> TensorProto:
    """Raw little-endian int8, or int4 packed two per byte (low nibble first), as ONNX stores them."""
    flat = codes.astype(np.int8).ravel()
    if bits == 8:
        return helper.make_tensor(name, TensorProto.INT8, codes.shape, flat.tobytes(), raw=True)
    nib = (flat.astype(np.uint8) & 0x0F)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, np.uint8)])
    packed = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.INT4, codes.shape, packed.tobytes(), raw=True)


def _encode(name: str, code: WeightCode, f: np.ndarray, transposed: bool) -> tuple[list, list, dict]:
    """Integer initializer + DQ (+ Add for an offset) nodes producing tensor `name`."""
    codes = code.codes.numpy().astype(np.int64)
    shape = codes.shape
    n_out = shape[0]
    axis_none = code.axis is None or code.scale.dim() == 0
    base = np.full(n_out, float(code.scale)) if axis_none else code.scale.numpy().astype(np.float64)
    if not axis_none and code.axis != 0:
        raise ValueError("only axis-0 codes are supported")
    scale = (base * f).astype(np.float32)
    bits = code.storage_bits()
    if transposed:  # MatMul weight = W^T: channels move to the last axis
        codes = codes.T
    q = _int_tensor(f"{name}__q", codes, bits)
    s = numpy_helper.from_array(scale, f"{name}__scale")
    axis = codes.ndim - 1 if transposed else 0
    dq_out = f"{name}__dq" if code.offset is not None else name
    nodes = [helper.make_node("DequantizeLinear", [q.name, s.name], [dq_out], axis=axis, name=f"{name}__DQ")]
    inits = [q, s]
    if code.offset is not None:
        off_base = np.full(n_out, float(code.offset)) if code.offset.dim() == 0 else code.offset.numpy()
        off = (off_base * f).astype(np.float32)
        off = off.reshape([1] * (codes.ndim - 1) + [-1]) if transposed else off.reshape([-1] + [1] * (codes.ndim - 1))
        o = numpy_helper.from_array(off, f"{name}__offset")
        inits.append(o)
        nodes.append(helper.make_node("Add", [dq_out, o.name], [name], name=f"{name}__Offset"))
    return inits, nodes, {"bits": bits, "numel": int(codes.size)}


def apply_codes(proto: onnx.ModelProto, codes: dict[str, WeightCode]) -> tuple[onnx.ModelProto, dict]:
    """Swap matching initializers; report stored bits, matched and unmatched parameters."""
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    by_size: dict[int, list[str]] = {}
    for n, i in inits.items():
        by_size.setdefault(int(np.prod(i.dims)) if i.dims else 1, []).append(n)
    matched, unmatched, new_nodes = {}, [], []
    float_bytes = stored_bytes = 0
    for pname, code in codes.items():
        deq = code.dequantize().numpy()
        hit = None
        for cand in ([pname] if pname in inits else []) + by_size.get(deq.size, []):
            if cand not in inits or cand in matched.values():
                continue
            w = numpy_helper.to_array(inits[cand])
            for transposed, target in ((False, w), (True, w.T if w.ndim == 2 else None)):
                f = _channel_factor(target, deq) if target is not None else None
                if f is not None:
                    hit = (cand, f, transposed)
                    break
            if hit:
                break
        if hit is None:
            unmatched.append(pname)
            continue
        cand, f, transposed = hit
        new_inits, nodes, info = _encode(cand, code, f, transposed)
        g.initializer.remove(inits.pop(cand))
        g.initializer.extend(new_inits)
        new_nodes.extend(nodes)
        matched[pname] = cand
        float_bytes += info["numel"] * 4
        stored_bytes += info["numel"] * info["bits"] / 8
    if new_nodes:
        for node in reversed(new_nodes):
            g.node.insert(0, node)
    report = {"integer_weights": len(matched), "unmatched": unmatched,
              "weight_bytes_float": int(float_bytes), "weight_bytes_stored": int(stored_bytes)}
    return proto, report
