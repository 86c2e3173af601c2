"""Exact integer W4A4 for LLM-FP4 layers: fake-quant activation + MatMul -> Cast(int8) + MatMulInteger + rescale.

Spec §9.3. Every 4-bit FP grid is integers times a unit, so a quantized linear is
    Y = Σ_j (u_ρ 2^-k_j · a_j) (u_W,i · w_ij) = u_ρ 2^-K u_W,i · Σ_j a_j · (2^(K-k_j) w_ij)
with integer activation codes a_j (|a| <= 64), weight codes w_ij and the FPQ shifts k_j (K = max k): the
pre-shifted weight codes 2^(K-k_j) w_ij are integers, stored as int8 when they fit (E2M1 weights with E2M1
activations: 12·8 = 96). MatMulInteger accumulates in int32 (exact), one Mul applies the per-output-channel
scale. Activation codes go in as uint8 a + z with zero point z = max code (E2M1: 0..24) whenever 2·2z·max|w| <=
32767, so that even AVX2's saturating u8·s8 pair-add (vpmaddubsw, no VNNI) stays exact; ONNX Runtime's u8s8 GEMM
is its fast path (s8s8 measured 5x slower on MiniLM). Otherwise they go in as int8 (exact everywhere). Driven by the records the method leaves (weight codes + `edgekit.quant.act_records`), never by guessing: a layer
is rewritten only when its fake-quant output Mul(codes, <name>.a_unit) feeds a MatMul/Gemm with its weight, directly
or through shape-only ops that keep every element in its channel, and everything fits int8 and int32; the rest
stays on the reference fake-quant path and is listed with the reason.

Shape-only ops between the fake-quant and the MatMul (the dynamo exporter + onnxslim turn a 3-D Linear into
Reshape(B·T, K) -> Gemm -> Reshape). Why looking through them is exact: the fake-quant output is codes ⊙ u with u
broadcast along the last axis (channel j = in-feature j), and the MatMul contracts the last axis of what it gets.
An op S may move the scaling past itself, S(codes ⊙ u) = S(codes) ⊙ u, iff every element keeps its last-axis
index. Reshape, Flatten, Squeeze and Unsqueeze keep the row-major order of the elements, so element f sits in
channel f mod K_in before and f mod K_out after: the channel is kept iff K_out == K_in (== K, the weight's
in-features); we require both last dims to be known statically (shape inference, or the Reshape's constant
target) and equal to K. Transpose keeps the channel iff perm[-1] is the last axis. Identity always does. Cast to
int8 is elementwise and exact on the integer codes (|a| <= 127), so it commutes with all of them. Anything else
(Slice, Concat, Gather, Expand, a Transpose that moves the last axis, unknown shapes) stops the walk.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant.codes import WeightCode
from ..quant.fp import max_code

_ORDER_KEEPING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_MAX_CHAIN = 4


def _consumers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _attr(node: onnx.NodeProto, name: str, default=None):
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def _value(g: onnx.GraphProto, name: str, depth: int = 0) -> np.ndarray | None:
    """Constant value of a tensor (float64): an initializer, a Constant, DequantizeLinear of initializers (int4/int8
    codes), or export.qdq's table decoding of 8-bit codes, Mul(Gather(table, Cast(indices)), scale)."""
    inits = {i.name: i for i in g.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float64)
    node = next((n for n in g.node if name in n.output), None)
    if node is None or depth > 4:
        return None
    if node.op_type == "Constant":
        return None if _attr(node, "value") is None else numpy_helper.to_array(_attr(node, "value")).astype(np.float64)
    if node.op_type in ("Cast", "Gather", "Mul"):  # the lut8 chain (module doc of export.qdq)
        vals = [_value(g, i, depth + 1) for i in node.input]
        if any(v is None for v in vals):
            return None
        if node.op_type == "Cast":
            return vals[0]
        if node.op_type == "Gather":
            return np.take(vals[0], vals[1].astype(np.int64), axis=_attr(node, "axis", 0))
        return vals[0] * vals[1]  # float32 x float32 is exact in float64
    if node.op_type != "DequantizeLinear" or any(i not in inits for i in node.input):
        return None
    q, s = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in node.input[:2])
    axis = _attr(node, "axis", 1)
    if s.ndim == 1 and s.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return q * s


def _shapes(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Inferred tensor shapes (None for unknown dims); empty when inference fails."""
    try:
        inf = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):  # a help, never a requirement
        return {}
    out = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _last_dim(g: onnx.GraphProto, shapes: dict, node: onnx.NodeProto | None, tensor: str) -> int | None:
    s = shapes.get(tensor)
    if s and s[-1]:
        return s[-1]
    if node is not None and node.op_type == "Reshape":  # the target shape's last entry, when a literal
        v = _value(g, node.input[1])
        if v is not None and v.size and v.reshape(-1)[-1] > 0:
            return int(v.reshape(-1)[-1])
    return None


def _keeps_channel(g: onnx.GraphProto, shapes: dict, node: onnx.NodeProto, k: int) -> bool:
    """Does this shape-only op keep every element's last-axis index (input last dim is k)? See the module doc."""
    k_in = _last_dim(g, shapes, None, node.input[0])
    if k_in is not None and k_in != k:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type == "Transpose":
        perm = _attr(node, "perm")
        return perm is not None and perm[-1] == len(perm) - 1
    if node.op_type in _ORDER_KEEPING:
        return _last_dim(g, shapes, node, node.output[0]) == k
    return False


def _is_weight(g: onnx.GraphProto, node: onnx.NodeProto, w: np.ndarray) -> bool:
    """Does this MatMul/Gemm multiply (its first input, contracted on the last axis) by weight w (out, in)?"""
    if len(node.input) < 2:
        return False
    if node.op_type == "Gemm" and (_attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0
                                   or _attr(node, "beta", 1.0) != 1.0):
        return False
    v = _value(g, node.input[1])
    target = w if node.op_type == "Gemm" and _attr(node, "transB", 0) else w.T
    return v is not None and v.shape == target.shape and bool(np.allclose(v, target, rtol=1e-6, atol=0))


def _find_matmul(g, cons, shapes, start: str, k: int, w: np.ndarray):
    """(MatMul/Gemm, chain of shape-only ops) reached from tensor `start` (last dim k), or (None, [])."""
    stack = [(start, [])]
    while stack:
        t, chain = stack.pop()
        for n in cons.get(t, []):
            if n.input[0] != t:
                continue
            if n.op_type in ("MatMul", "Gemm") and _is_weight(g, n, w):
                return n, chain
            if len(chain) < _MAX_CHAIN and (n.op_type == "Identity" or n.op_type == "Transpose"
                                            or n.op_type in _ORDER_KEEPING) and _keeps_channel(g, shapes, n, k):
                stack.append((n.output[0], chain + [n]))
    return None, []


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


def _toposort(g: onnx.GraphProto) -> None:
    """Stable topological order (a shared int8 chain may be created after a later consumer's position)."""
    known = {i.name for i in g.initializer} | {i.name for i in g.input} | {""}
    nodes, done = list(g.node), []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in known for i in n.input):
                done.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):  # a cycle or an outer-scope name: keep the remaining order as is
            done += rest
            break
        nodes = rest
    del g.node[:]
    g.node.extend(done)


def rewrite(proto: onnx.ModelProto, codes: dict[str, WeightCode], acts: dict,
            details: list | None = None, uint8: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Replace fake-quant linears by int8 MatMulInteger where exact; report rewritten and kept layers (with why).

    `details`, when given, receives one (layer, codes tensor, pre-bias output tensor, int weight (out, in),
    float64 scale) per rewritten layer, for `check`. uint8=False feeds every layer's codes as int8.
    """
    g = proto.graph
    shapes = _shapes(proto)
    units = {i.name: i for i in g.initializer if i.name.endswith(".a_unit")}
    cons = _consumers(g)
    done: list[str] = []
    kept: dict[str, str] = {}
    int_inputs: dict[tuple, tuple] = {}  # (codes tensor, chain, zero point) -> integer tensor, shared by q/k/v
    encodings: dict[str, str] = {}
    new_nodes: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    for name, act in acts.items():
        code = codes.get(f"{name}.weight")
        # slim merges equal constants and the identical fake-quants of q/k/v: match units by value, weights by value
        u_val = act.unit.numpy().astype(np.float32).reshape(-1)
        unames = [n for n, i in units.items() if np.array_equal(numpy_helper.to_array(i).reshape(-1), u_val)]
        if code is None:
            kept[name] = "no weight code recorded"
            continue
        if not unames:
            kept[name] = "its fake-quant is not in the exported graph (the layer does not reach an output)"
            continue
        w = code.dequantize().double().numpy()
        k_in = w.shape[1]
        mm, mul, chain = None, None, []
        for m in (n for u in unames for n in cons.get(u, []) if n.op_type == "Mul"):
            mm, chain = _find_matmul(g, cons, shapes, m.output[0], k_in, w)
            if mm is not None:
                mul = m
                break
        if mm is None:
            kept[name] = ("fake-quant output does not reach a MatMul/Gemm with this weight through channel-keeping "
                          "shape ops")
            continue
        shift = act.shift.numpy().astype(np.int64) if act.shift is not None else np.zeros(k_in, np.int64)
        K = int(shift.max())
        wq = code.codes.numpy().astype(np.int64) * (2 ** (K - shift))[None, :]  # (out, in) pre-shifted codes
        a_max = act.qmax if act.kind == "int" else max_code(*act.fmt)
        w_max = int(np.abs(wq).max())
        if w_max > 127 or a_max > 127:
            kept[name] = f"codes exceed int8 (pre-shifted weights up to {w_max}, activations up to {int(a_max)})"
            continue
        if k_in * a_max * w_max >= 2 ** 24:  # int32 sum exact; its Cast to float32 exact below 2^24
            kept[name] = f"accumulator may exceed 2^24 ({k_in}·{int(a_max)}·{w_max})"
            continue
        u_rho = act.unit.double().numpy().reshape(-1) * 2.0 ** shift  # u_j = u_rho 2^-k_j
        if not np.all(u_rho == u_rho[0]):
            kept[name] = "activation units are not one unit times powers of two"
            continue
        scale = (float(u_rho[0]) * 2.0 ** -K * code.scale.double().numpy().reshape(-1)).astype(np.float32)
        if scale.size == 1:
            scale = np.full(w.shape[0], scale[0], np.float32)
        codes_in = mul.input[1] if mul.input[0] in unames else mul.input[0]
        p = f"{name}__int"
        # uint8 codes + zero point a_max when no pair of products can saturate int16 (vpmaddubsw on AVX2 without
        # VNNI): ORT runs u8s8 through its fast int8 GEMM (measured 5x faster than s8s8 on MiniLM); else int8
        zp = int(a_max) if uint8 and 2 * (2 * int(a_max)) * w_max <= 32767 else None
        key = (codes_in, tuple(n.name or n.output[0] for n in chain), zp)
        nodes = []
        if key not in int_inputs:
            q = f"{p}_a8"
            if zp is None:
                nodes.append(helper.make_node("Cast", [codes_in], [q], to=TensorProto.INT8, name=f"{p}_CastA"))
            else:
                g.initializer.extend([numpy_helper.from_array(np.array(zp, np.float32), f"{p}_zpf"),
                                      numpy_helper.from_array(np.array(zp, np.uint8), f"{p}_zp")])
                nodes += [helper.make_node("Add", [codes_in, f"{p}_zpf"], [f"{p}_a8o"], name=f"{p}_OffsetA"),
                          helper.make_node("Cast", [f"{p}_a8o"], [q], to=TensorProto.UINT8, name=f"{p}_CastA")]
            for i, n in enumerate(chain):  # the same shape ops, on the integer codes
                c = onnx.NodeProto()
                c.CopyFrom(n)
                c.input[0] = q
                q = f"{p}_a8_{i}"
                c.output[0] = q
                c.name = f"{p}_{n.op_type}{i}"
                nodes.append(c)
            int_inputs[key] = (q, None if zp is None else f"{p}_zp")
        a8, zp_name = int_inputs[key]
        encodings[name] = "int8" if zp is None else f"uint8-{zp}"
        inits = [numpy_helper.from_array(wq.T.astype(np.int8), f"{p}_w"), numpy_helper.from_array(scale, f"{p}_s")]
        nodes += [helper.make_node("MatMulInteger", [a8, f"{p}_w"] + ([zp_name] if zp_name else []), [f"{p}_acc"],
                                   name=f"{p}_MMI"),
                  helper.make_node("Cast", [f"{p}_acc"], [f"{p}_accf"], to=TensorProto.FLOAT, name=f"{p}_CastY")]
        bias = mm.input[2] if mm.op_type == "Gemm" and len(mm.input) > 2 and mm.input[2] else None
        y = mm.output[0]
        nodes.append(helper.make_node("Mul", [f"{p}_accf", f"{p}_s"], [f"{p}_y" if bias else y], name=f"{p}_Scale"))
        if bias:
            nodes.append(helper.make_node("Add", [f"{p}_y", bias], [y], name=f"{p}_Bias"))
        new_nodes.append((mm, nodes))
        g.initializer.extend(inits)
        done.append(name)
        if details is not None:
            details.append((name, codes_in, f"{p}_y" if bias else y, wq,
                            float(u_rho[0]) * 2.0 ** -K * code.scale.double().numpy().reshape(-1)))
    for mm, nodes in new_nodes:
        idx = list(g.node).index(mm)
        g.node.remove(mm)
        for k, n in enumerate(nodes):
            g.node.insert(idx + k, n)
    _toposort(g)
    _prune(g)
    enc = sorted(set(encodings.values()))
    return proto, {"int_matmul_layers": len(done), "rewritten": done, "kept_fake_quant": kept,
                   "activation_encoding": {e: sum(v == e for v in encodings.values()) for e in enc}}


def _session(proto: onnx.ModelProto, extra: list[str]):
    import onnxruntime as ort

    p = onnx.ModelProto()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    p.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra if n not in have)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    so.log_severity_level = 3
    return ort.InferenceSession(p.SerializeToString(), so, providers=["CPUExecutionProvider"])


def check(ref: onnx.ModelProto, proto: onnx.ModelProto, details: list, feeds: dict[str, np.ndarray],
          rel_tol: float = 1e-6) -> dict:
    """Run the integer graph on ONNX Runtime and check every rewritten layer against exact arithmetic.

    Teacher-forced per layer, so it is immune to rounding flips upstream: the layer's own activation codes a (the
    float tensor the Cast reads) give the exact result y* = (a @ Wq^T) · s in float64, which is what the
    fake-quant linear computes in real arithmetic (codes·u_A times codes·u_W). The integer graph may differ from y*
    only by the float32 roundings of the scale and of the final Mul (|y - y*| <= ~2.4e-7 |y*| per element); a
    wrong shift, transpose or channel order is off by O(1). The end-to-end difference of the two graphs (which
    also holds the fake-quant graph's float32 accumulation error, propagated through later quantizers) is reported
    for scale, not gated.
    """
    sess = _session(proto, [n for d in details for n in d[1:3]])
    names = [o.name for o in sess.get_outputs()]
    vals = dict(zip(names, sess.run(None, feeds)))
    layers, worst = {}, 0.0
    for name, a_t, y_t, wq, scale in details:
        a = vals[a_t].astype(np.float64).reshape(-1, wq.shape[1])
        y = vals[y_t].astype(np.float64).reshape(-1, wq.shape[0])
        exact = (a @ wq.T.astype(np.float64)) * scale[None, :]
        err = float((np.abs(y - exact) / np.maximum(np.abs(exact), 1e-30)).max()) if exact.size else 0.0
        layers[name] = err
        worst = max(worst, err)
    rs = _session(ref, [])
    n_out = len(ref.graph.output)
    got, want = sess.run(names[:n_out], feeds), rs.run(None, feeds)
    e2e = max(float(np.linalg.norm(np.asarray(g, np.float64) - w) / max(np.linalg.norm(w), 1e-30))
              for g, w in zip(got, want))
    return {"ok": worst <= rel_tol, "max_layer_rel_err_vs_exact": worst, "tolerance": rel_tol,
            "worst_layer": max(layers, key=layers.get) if layers else None,
            "end_to_end_rel_l2_vs_fake_quant_graph": e2e}
