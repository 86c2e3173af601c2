"""Replace float initializers that a method left on an integer grid by integer initializers + DequantizeLinear.

Matching is by value, not trust: the exported initializer of parameter P must equal f_c * dequant(codes) for a
per-output-channel factor f_c (f = 1 normally; the exporter folds BatchNorm into conv weights, which gives
f_c = gamma_c / sigma_c). The factor goes into a per-channel DequantizeLinear scale (axis 0), so codes stay
exact. Transposed copies (Linear exported as MatMul) are matched too. Anything that does not match is left
in float and listed, never silently approximated.

Storage kinds, picked from the codes' actual range (never from the nominal bit width alone):
- int4 + DequantizeLinear: bits <= 4 and every code in [-8, 7] (RTN/UDFC int4, LLM-FP4 E1M2);
- int8 + DequantizeLinear: every code in [-128, 127];
- lut8: uint8 indices into a float32 table of the tensor's distinct codes (at most 256 values, each exact in
  float32) -> Cast(int32) -> Gather -> Mul(scale) (+ Add offset). Why: an 8-bit floating-point grid written as
  integer codes times a unit (LLM-FP4, `edgekit.quant.fp`) spans far more than int8: the largest code is
  (2^(M+1)-1)·2^(2^E-2) = 127 (E1M6), 252 (E2M5), 1984 (E3M4), 245760 (E4M3), 7·2^30 (E5M2), while the grid has only
  255 values. Casting those codes to int8 wrapped them around (252 -> -4): the weight-only W8 and W8A8 exports of
  every BERT came out garbage (MiniLM rel L2 ~8) because the old rule took "bits == 8" to mean "fits int8". ONNX
  FLOAT8 types cannot hold these grids either (no E3M4/E2M5/E1M6 type; our E4M3/E5M2 have no inf/NaN codes, so
  their top binade is not in E4M3FN/E5M2), hence the table: exact, one byte per weight, plain ops that every
  runtime constant-folds at load (so the speed is that of the float model);
- lut4: the same with uint4 indices (two per byte) when a <= 4-bit request's codes take at most 16 distinct values
  but exceed int4 (FP4 E2M1 / E3M0 grids: codes up to 12 / 64) -> DequantizeLinear(uint4 -> float index) -> Cast ->
  Gather -> Mul: a 4-bit request stores 4 bits (+ a 16-entry table per tensor), not 8;
- bitplane: a <= 3-bit request whose codes take at most 2^b distinct values (b = 1, 2, 3: binary ±1 codes,
  DenseShift's 2/3-bit ±2^p grids, RTN/UDFC at 2-3 bits) stores b bits per weight: the index into a float32 table of
  the distinct codes, split into b bit planes, each packed 8 indices per uint8 byte (little bit order). In the
  graph: Cast(plane) -> Div by 2^j -> Floor -> Mod 2 -> sum of bit_k * 2^k -> Reshape -> Slice -> Cast ->
  Gather(table) -> Mul(scale) (+ Add offset); all on constants, so the runtimes fold it at load (speed = the float
  model's) while the file holds b bits per weight plus a 2^b-entry table per tensor (why these ops: `_bitplanes`;
  the OpenVINO IR keeps them as bytes through `planes_for_openvino`). Why not int4 there: a 2-bit request stored
  in 4 bits is twice the size it claims (issue 17);
- group-wise codes (`WeightCode.group_size` g: one scale per g input weights of an output channel) are stored as
  int4/int8 + a blocked DequantizeLinear (opset 21 `block_size` = g along the input axis, scale [out, in/g] or its
  transpose), which ONNX Runtime and OpenVINO both read; group codes that fit neither int4 nor int8, or carry an
  offset, stay float with the reason (a table or bit-plane form would need a per-weight scale);
- anything else (more than 256 distinct codes out of int8, or codes not exact in float32) stays float and is
  listed in "kept_float" with the reason.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant.codes import WeightCode

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
    lo, hi = (-8, 7) if bits == 4 else (-128, 127)
    if codes.size and (codes.min() < lo or codes.max() > hi):  # never wrap around (see the module doc)
        raise ValueError(f"codes in [{codes.min()}, {codes.max()}] do not fit int{bits}")
    flat = codes.astype(np.int8).ravel()
    if bits == 8:
        return helper.make_tensor(name, TensorProto.INT8, codes.shape, flat.tobytes(), raw=True)
    nib = (flat.astype(np.uint8) & 0x0F)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, np.uint8)])
    packed = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.INT4, codes.shape, packed.tobytes(), raw=True)


def _uint4_tensor(name: str, idx: np.ndarray) -> TensorProto:
    """uint4 indices packed two per byte, low nibble first."""
    flat = idx.astype(np.uint8).ravel()
    if flat.size and flat.max() > 15:
        raise ValueError("uint4 indices must be < 16")
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.UINT4, idx.shape, packed.tobytes(), raw=True)


def plane_bits(n_values: int) -> int:
    """Bit planes needed to index n distinct values (at least 1)."""
    return max(1, int(np.ceil(np.log2(max(n_values, 1)))))


def storage_kind(code: WeightCode) -> tuple[str | None, str]:
    """("bitplane" | "int4" | "int8" | "lut4" | "lut8", "") for the storage the codes fit exactly, or (None, why
    not); module doc."""
    codes = code.codes.numpy().astype(np.int64) if not code.codes.is_floating_point() else code.codes.double().numpy()
    if codes.size == 0:
        return "int8", ""
    if not np.array_equal(codes, np.round(codes)):
        return None, "codes are not integers"
    codes = codes.astype(np.int64)
    lo, hi = int(codes.min()), int(codes.max())
    if code.group_size is not None:
        if code.offset is not None:
            return None, "group-wise codes with an offset have no blocked DequantizeLinear form"
        if code.bits <= 4 and -8 <= lo and hi <= 7:
            return "int4", ""
        if -128 <= lo and hi <= 127:
            return "int8", ""
        return None, f"group-wise codes in [{lo}, {hi}] fit neither int4 nor int8"
    vals = np.unique(codes)
    if code.bits <= 3 and vals.size <= 1 << code.bits and codes.size >= 64 and \
            np.array_equal(vals.astype(np.float32).astype(np.int64), vals):
        return "bitplane", ""  # (tiny tensors: the unpack ops would outweigh the bytes saved)
    if code.bits <= 4 and -8 <= lo and hi <= 7:
        return "int4", ""
    if code.bits <= 4 and vals.size <= 16 and np.array_equal(vals.astype(np.float32).astype(np.int64), vals):
        return "lut4", ""
    if -128 <= lo and hi <= 127:
        return "int8", ""
    if vals.size > 256:
        return None, f"codes in [{lo}, {hi}] exceed int8 and take {vals.size} > 256 distinct values"
    if not np.array_equal(vals.astype(np.float32).astype(np.int64), vals):
        return None, "codes are not exact in float32"
    return "lut8", ""


def _bitplanes(name: str, codes: np.ndarray, scale: np.ndarray, out: str) -> tuple[list, list, int]:
    """b packed bit planes of the table indices + the unpack/lookup/scale nodes producing `out`; returns b.

    The unpack is float arithmetic on the bytes (Cast -> Div by 2^j -> Floor -> Mod 2), exact for 0..255. Why not
    BitShift/BitwiseAnd: OpenVINO 2026.4 computed wrong weights when such a chain fed a MatMul (its decompression
    handling keeps integer subgraphs before MatMul weights unfolded, and the result was off by whole indices; the
    same graph feeding an Add or a Conv was right, and ONNX Runtime was right everywhere).

    Why Cast here and DequantizeLinear only for OpenVINO (`planes_for_openvino`): ONNX Runtime constant-folds the
    Cast chain when it loads the file, but not a DequantizeLinear (kept for its QDQ fusions unless the session sets
    session.disable_quant_qdq), so a plain session decoded every weight on every call: 20x FP32's time on ResNet-20.
    OpenVINO's converter, the other way round, folds Cast + Div into float32 tensors, so its IR held the planes as
    4 bytes per *bit* (3.5 MB against 1.15 MB in FP32), while DequantizeLinear of uint8 constants is its weight
    decompression pattern, kept as u8 in the IR and folded only when the model is compiled."""
    vals = np.unique(codes)
    b = plane_bits(vals.size)
    idx = np.searchsorted(vals, codes).ravel()
    n = idx.size
    p = f"{name}__bp"
    pw = numpy_helper.from_array((1 << np.arange(8)).astype(np.float32).reshape(1, 8), f"{p}_pow2")
    two = numpy_helper.from_array(np.array(2.0, np.float32), f"{p}_two")
    lut = numpy_helper.from_array(vals.astype(np.float32), f"{name}__lut")
    s = numpy_helper.from_array(scale.astype(np.float32), f"{name}__scale")
    flat = numpy_helper.from_array(np.array([-1], np.int64), f"{p}_flat")
    start = numpy_helper.from_array(np.array([0], np.int64), f"{p}_start")
    end = numpy_helper.from_array(np.array([n], np.int64), f"{p}_end")
    shape = numpy_helper.from_array(np.array(codes.shape, np.int64), f"{p}_shape")
    inits, nodes, acc = [pw, two, lut, s, flat, start, end, shape], [], None
    for k in range(b):
        plane = np.packbits(((idx >> k) & 1).astype(np.uint8), bitorder="little").reshape(-1, 1)
        t = numpy_helper.from_array(plane, f"{p}{k}")
        w = numpy_helper.from_array(np.array(float(1 << k), np.float32), f"{p}{k}_w")
        inits += [t, w]
        q = f"{p}{k}"
        nodes += [helper.make_node("Cast", [t.name], [f"{q}_f"], to=TensorProto.FLOAT, name=f"{q}_Cast"),
                  helper.make_node("Div", [f"{q}_f", pw.name], [f"{q}_d"], name=f"{q}_Div"),
                  helper.make_node("Floor", [f"{q}_d"], [f"{q}_fl"], name=f"{q}_Floor"),
                  helper.make_node("Mod", [f"{q}_fl", two.name], [f"{q}_bit"], fmod=1, name=f"{q}_Mod"),
                  helper.make_node("Mul", [f"{q}_bit", w.name], [f"{q}_v"], name=f"{q}_Weight")]
        if acc is None:
            acc = f"{q}_v"
        else:
            nodes.append(helper.make_node("Add", [acc, f"{q}_v"], [f"{q}_acc"], name=f"{q}_Sum"))
            acc = f"{q}_acc"
    nodes += [helper.make_node("Reshape", [acc, flat.name], [f"{p}_all"], name=f"{p}_Flat"),
              helper.make_node("Slice", [f"{p}_all", start.name, end.name], [f"{p}_idx"], name=f"{p}_Slice"),
              helper.make_node("Reshape", [f"{p}_idx", shape.name], [f"{p}_idxf"], name=f"{p}_Shape"),
              helper.make_node("Cast", [f"{p}_idxf"], [f"{name}__idx32"], to=TensorProto.INT32, name=f"{p}_Index"),
              helper.make_node("Gather", [lut.name, f"{name}__idx32"], [f"{name}__codes"], axis=0,
                               name=f"{name}__LUT"),
              helper.make_node("Mul", [f"{name}__codes", s.name], [out], name=f"{name}__Scale")]
    return inits, nodes, b


def planes_for_openvino(proto: onnx.ModelProto) -> bool:
    """Rewrite each bit plane's Cast(uint8 -> float) as DequantizeLinear(plane, 1.0), in place, for OpenVINO's
    converter (why: `_bitplanes`); returns whether the graph had any."""
    planes = {i.name for i in proto.graph.initializer if i.data_type == TensorProto.UINT8 and "__bp" in i.name}
    one = "edgekit__bp_one"
    hit = False
    for k, n in enumerate(proto.graph.node):
        if n.op_type == "Cast" and len(n.input) == 1 and n.input[0] in planes:
            proto.graph.node[k].CopyFrom(helper.make_node("DequantizeLinear", [n.input[0], one], list(n.output),
                                                          name=n.name))
            hit = True
    if hit:
        proto.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
    return hit


def _bcast_shape(n_out: int, ndim: int, transposed: bool) -> list[int]:
    """Shape that broadcasts a per-output-channel vector over the (possibly transposed) weight."""
    return [1] * (ndim - 1) + [n_out] if transposed else [n_out] + [1] * (ndim - 1)


def _encode(name: str, code: WeightCode, f: np.ndarray, transposed: bool, kind: str) -> tuple[list, list, dict]:
    """Integer initializer + DQ (int4/int8) or Cast/Gather/Mul (lut8), + Add for an offset, producing `name`."""
    codes = code.codes.double().numpy().astype(np.int64)
    shape = codes.shape
    n_out = shape[0]
    axis_none = code.axis is None or code.scale.dim() == 0
    base = np.full(n_out, float(code.scale)) if axis_none else code.scale.numpy().astype(np.float64)
    if not axis_none and code.axis != 0:
        raise ValueError("only axis-0 codes are supported")
    if code.group_size is not None:  # [out, in/g] scales times the per-channel factor; blocks along the input axis
        scale = (base * f[:, None]).astype(np.float32)
        bits = 4 if kind == "int4" else 8
        q = _int_tensor(f"{name}__q", codes.T if transposed else codes, bits)
        s = numpy_helper.from_array(scale.T.copy() if transposed else scale, f"{name}__scale")
        return [q, s], [helper.make_node("DequantizeLinear", [q.name, s.name], [name], axis=0 if transposed else 1,
                                         block_size=code.group_size, name=f"{name}__DQ")], \
            {"bits": bits, "numel": int(codes.size), "kind": kind}
    scale = (base * f).astype(np.float32)
    if transposed:  # MatMul weight = W^T: channels move to the last axis
        codes = codes.T
    axis = codes.ndim - 1 if transposed else 0
    deq = f"{name}__dq" if code.offset is not None else name
    if kind == "bitplane":
        inits, nodes, bits = _bitplanes(name, codes, scale.reshape(_bcast_shape(n_out, codes.ndim, transposed)), deq)
    elif kind in ("lut8", "lut4"):
        vals = np.unique(codes)
        idx = np.searchsorted(vals, codes).astype(np.uint8)
        lut = numpy_helper.from_array(vals.astype(np.float32), f"{name}__lut")
        s = numpy_helper.from_array(scale.reshape(_bcast_shape(n_out, codes.ndim, transposed)), f"{name}__scale")
        if kind == "lut8":
            q = numpy_helper.from_array(idx, f"{name}__idx")
            nodes = [helper.make_node("Cast", [q.name], [f"{name}__idx32"], to=TensorProto.INT32,
                                      name=f"{name}__Cast")]
            inits = [q, lut, s]
        else:  # uint4 indices; DequantizeLinear (scale 1, zero point 0) turns them into float indices
            q = _uint4_tensor(f"{name}__idx", idx)
            one = numpy_helper.from_array(np.array(1.0, np.float32), f"{name}__one")
            nodes = [helper.make_node("DequantizeLinear", [q.name, one.name], [f"{name}__idxf"], name=f"{name}__DQi"),
                     helper.make_node("Cast", [f"{name}__idxf"], [f"{name}__idx32"], to=TensorProto.INT32,
                                      name=f"{name}__Cast")]
            inits = [q, one, lut, s]
        nodes += [helper.make_node("Gather", [lut.name, f"{name}__idx32"], [f"{name}__codes"], axis=0,
                                   name=f"{name}__LUT"),
                  helper.make_node("Mul", [f"{name}__codes", s.name], [deq], name=f"{name}__Scale")]
        bits = 8 if kind == "lut8" else 4
    else:
        bits = 4 if kind == "int4" else 8
        q = _int_tensor(f"{name}__q", codes, bits)
        s = numpy_helper.from_array(scale, f"{name}__scale")
        nodes = [helper.make_node("DequantizeLinear", [q.name, s.name], [deq], axis=axis, name=f"{name}__DQ")]
        inits = [q, s]
    if code.offset is not None:
        off_base = np.full(n_out, float(code.offset)) if code.offset.dim() == 0 else code.offset.numpy()
        off = (off_base * f).astype(np.float32).reshape(_bcast_shape(n_out, codes.ndim, transposed))
        o = numpy_helper.from_array(off, f"{name}__offset")
        inits.append(o)
        nodes.append(helper.make_node("Add", [deq, o.name], [name], name=f"{name}__Offset"))
    return inits, nodes, {"bits": bits, "numel": int(codes.size), "kind": kind}


def apply_codes(proto: onnx.ModelProto, codes: dict[str, WeightCode]) -> tuple[onnx.ModelProto, dict]:
    """Swap matching initializers; report stored bits, matched and unmatched parameters."""
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    by_size: dict[int, list[str]] = {}
    for n, i in inits.items():
        by_size.setdefault(int(np.prod(i.dims)) if i.dims else 1, []).append(n)
    matched, unmatched, new_nodes, kept_float, kinds = {}, [], [], {}, {}
    float_bytes = stored_bytes = 0
    for pname, code in codes.items():
        kind, why = storage_kind(code)
        if kind is None:
            kept_float[pname] = why
            continue
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
        new_inits, nodes, info = _encode(cand, code, f, transposed, kind)
        g.initializer.remove(inits.pop(cand))
        g.initializer.extend(new_inits)
        new_nodes.extend(nodes)
        matched[pname] = cand
        kinds[kind] = kinds.get(kind, 0) + 1
        float_bytes += info["numel"] * 4
        stored_bytes += info["numel"] * info["bits"] / 8
    if new_nodes:
        for node in reversed(new_nodes):
            g.node.insert(0, node)
    report = {"integer_weights": len(matched), "unmatched": unmatched, "storage": kinds,
              "weight_bytes_float": int(float_bytes), "weight_bytes_stored": int(stored_bytes)}
    if kept_float:
        report["kept_float"] = kept_float
    return proto, report
