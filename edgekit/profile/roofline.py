"""FLOPs and bytes per inference from the ONNX graph, and roofline / calibrated latency estimates for a target.

Everything here is an *estimate* and is labelled so in reports:
- MACs are counted for Conv/ConvTranspose/MatMul/Gemm (and their integer/QLinear forms) and attention ops
  (ONNX Attention, com.microsoft Attention/MultiHeadAttention); FLOPs = 2 x MACs + one per output element of
  other arithmetic ops.
- bytes: weights (initializers, at their stored dtype) + graph inputs/outputs is the compulsory traffic used for
  the roofline floor; intermediate activation bytes are reported beside it (they may stay in cache).
- roofline_ms = max(FLOPs / peak, bytes / bandwidth) for the target's figures.
- calibrated_ms = measured host latency x target roofline / host roofline, i.e. the runtime is assumed to reach
  the same fraction of its roofline on the target as it reached on this host.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import onnx
from onnx import TensorProto, helper, shape_inference

from ..targets import TargetProfile

_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FusedMatMul", "MatMulNBits"}
_CONV = {"Conv", "ConvInteger", "QLinearConv", "FusedConv"}
_NO_FLOP = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
            "Shape", "Constant", "Identity", "Cast", "Expand", "Pad", "DequantizeLinear", "QuantizeLinear",
            "ConstantOfShape", "Range", "GatherElements", "Tile"}
_INT_ACT = {"MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv"}


def _numel(shape: Sequence[int | None] | None) -> int | None:
    """Element count, or None when any dimension is unknown."""
    if shape is None or any(d is None or d < 0 for d in shape):
        return None
    return math.prod(shape)


def _dtype_bytes(elem_type: int) -> float:
    """Bytes per element of an ONNX tensor type (int4 counts half a byte)."""
    if elem_type in (TensorProto.INT4, TensorProto.UINT4):
        return 0.5
    return float(helper.tensor_dtype_to_np_dtype(elem_type).itemsize) if elem_type else 4.0


def _fix_inputs(model: onnx.ModelProto, shapes: dict[str, Sequence[int]] | None) -> None:
    """Make graph input dims concrete (from `shapes`, symbolic dims -> 1) so shape inference gives numbers."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        want = list((shapes or {}).get(inp.name, []))
        for k, d in enumerate(dims):
            if k < len(want) and isinstance(want[k], int) and want[k] > 0:
                d.ClearField("dim_param")
                d.dim_value = want[k]
            elif not d.HasField("dim_value"):
                d.ClearField("dim_param")
                d.dim_value = 1


def _tensor_table(model: onnx.ModelProto) -> dict[str, tuple[list[int | None], int]]:
    """Name -> (shape, elem_type) for every tensor shape inference could resolve."""
    table: dict[str, tuple[list[int | None], int]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            table[vi.name] = ([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim], tt.elem_type)
    for init in g.initializer:
        table[init.name] = (list(init.dims), init.data_type)
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    table[node.output[0]] = (list(a.t.dims), a.t.data_type)
    return table


def node_macs(node: onnx.NodeProto, table: dict[str, tuple[list[int | None], int]]) -> int | None:
    """Multiply-accumulates of one Conv/MatMul/Gemm/attention node (None when a shape is unknown, 0 if not such op)."""
    def shape(i: int, outputs: bool = False) -> list[int | None] | None:
        names = node.output if outputs else node.input
        return table.get(names[i], (None, 0))[0] if i < len(names) and names[i] else None

    op = node.op_type
    if op in _CONV:
        w_idx = 3 if op == "QLinearConv" else 1
        out, w = _numel(shape(0, True)), shape(w_idx)
        return None if out is None or w is None else out * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = _numel(shape(0)), shape(1)
        return None if x is None or w is None else x * math.prod(w[1:])
    if op in _MATMUL:
        out = _numel(shape(0, True))
        a = shape(0)
        if out is None or not a:
            return None
        trans_a = next((a_.i for a_ in node.attribute if a_.name == "transA"), 0) if op == "Gemm" else 0
        k = a[0] if trans_a else a[-1]
        return None if k is None else out * k
    if op in ("Attention", "MultiHeadAttention"):
        return _attention_macs(node, shape)
    return 0


def _attention_macs(node: onnx.NodeProto, shape: Any) -> int | None:
    """QK^T + AV MACs (+ the fused QKV projection of com.microsoft Attention)."""
    q = shape(0)
    if q is None or any(d is None for d in q):
        return None
    if node.domain == "com.microsoft" and node.op_type == "Attention":
        w = shape(1)  # input [B,S,in], weights [in, 3*hidden]
        if w is None:
            return None
        b, s, hidden = q[0], q[1], w[1] // 3
        return b * s * q[2] * w[1] + 2 * b * s * s * hidden
    k, v = shape(1), shape(2)
    if k is None or v is None or any(d is None for d in k + v):
        return None
    if len(q) == 4:  # [B, H, S, D]
        return q[0] * q[1] * q[2] * k[2] * (q[3] + v[3])
    return q[0] * q[1] * k[1] * (q[2] + v[2])  # [B, S, H*D]


def graph_cost(onnx_path: Path, input_shapes: dict[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """MACs, FLOPs and bytes of one inference of an ONNX file (estimate, see module docstring)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    _fix_inputs(model, input_shapes)
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - custom domains can defeat inference; count what is known
        pass
    table = _tensor_table(model)
    g = model.graph
    inits = {i.name for i in g.initializer}
    macs = other = 0
    unknown: list[str] = []
    int_compute = False
    for node in g.node:
        m = node_macs(node, table)
        if m is None:
            unknown.append(node.name or node.op_type)
            continue
        macs += m
        int_compute |= node.op_type in _INT_ACT or (node.op_type == "QuantizeLinear" and node.input[0] not in inits)
        if m == 0 and node.op_type not in _NO_FLOP:
            other += sum(_numel(table.get(o, (None, 0))[0]) or 0 for o in node.output)
    weight_bytes = sum(math.prod(i.dims) * _dtype_bytes(i.data_type) for i in g.initializer)
    io_names = [i.name for i in g.input if i.name not in inits] + [o.name for o in g.output]
    io_bytes = sum((_numel(table[n][0]) or 0) * _dtype_bytes(table[n][1]) for n in io_names if n in table)
    act_names = {o for n in g.node for o in n.output} - set(io_names)
    act_bytes = sum((_numel(table[n][0]) or 0) * _dtype_bytes(table[n][1]) for n in act_names if n in table)
    return {"macs": int(macs), "flops": int(2 * macs + other), "weight_bytes": int(weight_bytes),
            "io_bytes": int(io_bytes), "activation_bytes": int(act_bytes),
            "bytes": int(weight_bytes + io_bytes), "compute_precision": "int8" if int_compute else "float",
            "unknown_nodes": unknown[:20], "n_unknown": len(unknown)}


def _peak(target: TargetProfile, precision: str) -> tuple[float, str]:
    """Peak GFLOP/s for the graph's compute precision (float -> fp32, else the first float the target has)."""
    peaks = target.hardware.peak_gflops
    order = ["int8"] if precision == "int8" else []
    order += ["fp32", "fp16", "bf16", "int8"]
    for p in order:
        if p in peaks:
            return peaks[p], p
    p, v = next(iter(peaks.items()))
    return v, p


def roofline(cost: dict[str, Any], target: TargetProfile, threads: int | None = None) -> dict[str, Any]:
    """max(FLOPs/peak, bytes/bandwidth) on a target; `threads` scales the peak linearly (host calibration)."""
    peak, prec = _peak(target, cost["compute_precision"])
    if threads:
        peak *= min(threads, target.threads) / target.threads
    compute_ms = cost["flops"] / (peak * 1e9) * 1e3
    memory_ms = cost["bytes"] / (target.hardware.mem_bandwidth_gbs * 1e9) * 1e3
    return {"roofline_ms": max(compute_ms, memory_ms), "compute_ms": compute_ms, "memory_ms": memory_ms,
            "bound": "compute" if compute_ms >= memory_ms else "memory", "peak_gflops": peak, "peak_precision": prec}


def estimate(cost: dict[str, Any], target: TargetProfile, host: TargetProfile, measured_p50_ms: float | None,
             host_threads: int | None) -> dict[str, Any]:
    """Target roofline plus the host-calibrated estimate; every figure here is labelled an estimate."""
    tgt = roofline(cost, target)
    hst = roofline(cost, host, threads=host_threads)
    out: dict[str, Any] = {"label": "estimate", **{k: cost[k] for k in ("macs", "flops", "weight_bytes", "io_bytes",
                                                                          "activation_bytes", "bytes")},
                           "target": tgt, "host_profile": host.name, "host_roofline_ms": hst["roofline_ms"],
                           "host_efficiency": None, "calibrated_ms": None}
    if measured_p50_ms and hst["roofline_ms"] > 0:
        out["host_efficiency"] = hst["roofline_ms"] / measured_p50_ms
        out["calibrated_ms"] = measured_p50_ms * tgt["roofline_ms"] / hst["roofline_ms"]
    if cost.get("n_unknown"):
        out["note"] = f"{cost['n_unknown']} nodes with unknown shapes were not counted"
    return out
