"""Exact integer W4A4 for LLM-FP4 layers: fake-quant activation + MatMul -> Cast(int8) + MatMulInteger + rescale.

Spec §9.3. Every 4-bit FP grid is integers times a unit, so a quantized linear is
    Y = Σ_j (u_ρ 2^-k_j · a_j) (u_W,i · w_ij) = u_ρ 2^-K u_W,i · Σ_j a_j · (2^(K-k_j) w_ij)
with integer activation codes a_j (|a| <= 64), weight codes w_ij and the FPQ shifts k_j (K = max k): the
pre-shifted weight codes 2^(K-k_j) w_ij are integers, stored as int8 when they fit (E2M1 weights with E2M1
activations: 12·8 = 96). MatMulInteger accumulates in int32 (exact), one Mul applies the per-output-channel
scale. Driven by the records the method leaves (weight codes + `llm_fp4.act_records`), never by guessing: a layer
is rewritten only when its fake-quant output Mul(codes, <name>.a_unit) feeds a MatMul/Gemm and everything fits
int8; the rest stays on the reference fake-quant path and is listed.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..methods._fp import max_code
from ..methods._quant import WeightCode


def _consumers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _value(g: onnx.GraphProto, name: str) -> np.ndarray | None:
    """Constant value of a tensor: an initializer, or DequantizeLinear of initializers (int4/int8 codes)."""
    inits = {i.name: i for i in g.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float64)
    dq = next((n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] == name), None)
    if dq is None or any(i not in inits for i in dq.input):
        return None
    q, s = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in dq.input[:2])
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if s.ndim == 1 and s.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return q * s


def _is_weight(g: onnx.GraphProto, node: onnx.NodeProto, w: np.ndarray) -> bool:
    """Does this MatMul/Gemm multiply by weight w (out, in)?"""
    if len(node.input) < 2:
        return False
    v = _value(g, node.input[1])
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    target = w if trans_b else w.T
    return v is not None and v.shape == target.shape and bool(np.allclose(v, target, rtol=1e-6, atol=0))


def _prune(g: onnx.GraphProto) -> None:
    """Drop nodes and initializers nothing reads any more."""
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def rewrite(proto: onnx.ModelProto, codes: dict[str, WeightCode], acts: dict) -> tuple[onnx.ModelProto, dict]:
    """Replace fake-quant linears by int8 MatMulInteger where exact; report rewritten and kept layers."""
    g = proto.graph
    units = {i.name: i for i in g.initializer if i.name.endswith(".a_unit")}
    cons = _consumers(g)
    done, kept = [], {}
    for name, act in acts.items():
        code = codes.get(f"{name}.weight")
        # slim merges equal constants and the identical fake-quants of q/k/v: match units by value, weights by value
        u_val = act.unit.numpy().astype(np.float32).reshape(-1)
        unames = [n for n, i in units.items() if np.array_equal(numpy_helper.to_array(i).reshape(-1), u_val)]
        if code is None or not unames:
            kept[name] = "no weight code or a_unit initializer"
            continue
        w = code.dequantize().double().numpy()
        mm, mul = None, None
        for m in (n for u in unames for n in cons.get(u, []) if n.op_type == "Mul"):
            mm = next((n for n in cons.get(m.output[0], []) if n.op_type in ("MatMul", "Gemm")
                       and n.input[0] == m.output[0] and _is_weight(g, n, w)), None)
            if mm is not None:
                mul = m
                break
        if mm is None:
            kept[name] = "fake-quant output does not feed a MatMul/Gemm with this weight"
            continue
        shift = act.shift.numpy().astype(np.int64) if act.shift is not None else np.zeros(code.codes.shape[1], np.int64)
        K = int(shift.max())
        wq = code.codes.numpy().astype(np.int64) * (2 ** (K - shift))[None, :]  # (out, in) pre-shifted codes
        a_max = act.qmax if act.kind == "int" else max_code(*act.fmt)
        if np.abs(wq).max() > 127 or a_max > 127:
            kept[name] = f"codes exceed int8 (weights {int(np.abs(wq).max())}, activations {int(a_max)})"
            continue
        u_rho = float(act.unit.double().reshape(-1)[0]) * 2.0 ** int(shift[0])  # u_j = u_rho 2^-k_j
        scale = (u_rho * 2.0 ** -K * code.scale.double().numpy()).astype(np.float32)
        codes_in = mul.input[1] if mul.input[0] in unames else mul.input[0]
        p = f"{name}__int"
        inits = [numpy_helper.from_array(wq.T.astype(np.int8), f"{p}_w"), numpy_helper.from_array(scale, f"{p}_s")]
        nodes = [helper.make_node("Cast", [codes_in], [f"{p}_a8"], to=TensorProto.INT8, name=f"{p}_CastA"),
                 helper.make_node("MatMulInteger", [f"{p}_a8", f"{p}_w"], [f"{p}_acc"], name=f"{p}_MMI"),
                 helper.make_node("Cast", [f"{p}_acc"], [f"{p}_accf"], to=TensorProto.FLOAT, name=f"{p}_CastY")]
        bias = mm.input[2] if mm.op_type == "Gemm" and len(mm.input) > 2 and mm.input[2] else None
        y = mm.output[0]
        nodes.append(helper.make_node("Mul", [f"{p}_accf", f"{p}_s"], [f"{p}_y" if bias else y], name=f"{p}_Scale"))
        if bias:
            nodes.append(helper.make_node("Add", [f"{p}_y", bias], [y], name=f"{p}_Bias"))
        idx = list(g.node).index(mm)
        g.node.remove(mm)
        for k, n in enumerate(nodes):
            g.node.insert(idx + k, n)
        g.initializer.extend(inits)
        done.append(name)
    _prune(g)
    return proto, {"int_matmul_layers": len(done), "kept_fake_quant": kept}
