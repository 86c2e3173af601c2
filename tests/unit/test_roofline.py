"""Roofline: MACs/bytes of hand-built ONNX graphs equal hand-computed values; estimates scale as documented."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.profile.roofline import estimate, graph_cost, roofline
from edgekit.targets import load_target


def _save(tmp_path, nodes, inputs, outputs, inits, opset=21, name="g.onnx"):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    p = tmp_path / name
    onnx.save(m, str(p))
    return p


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def test_conv_grouped_gemm_transposed_and_matmul(tmp_path):
    w = np.zeros((8, 2, 3, 3), np.float32)           # grouped conv: 4 in -> 8 out, groups=2
    fc = np.zeros((10, 8 * 6 * 6), np.float32)       # Gemm with transB: [10, 288]
    mm = np.zeros((10, 5), np.int8)                   # int8 weight, dequantized before MatMul
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=2),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
             helper.make_node("DequantizeLinear", ["mm", "s"], ["mmf"]),
             helper.make_node("MatMul", ["y", "mmf"], ["z"])]
    p = _save(tmp_path, nodes, [_vi("x", ["batch", 4, 8, 8])], [_vi("z", None)],
              {"w": w, "fc": fc, "mm": mm, "s": np.array(0.1, np.float32)})
    c = graph_cost(p, {"x": [1, 4, 8, 8]})
    conv = (1 * 8 * 6 * 6) * (2 * 3 * 3)             # out elements x (C_in/groups x kh x kw) = 5184
    gemm = 10 * 288                                   # out elements x K
    matmul = 5 * 10
    assert c["macs"] == conv + gemm + matmul
    relu_elems = 8 * 6 * 6
    assert c["flops"] == 2 * c["macs"] + relu_elems
    assert c["weight_bytes"] == w.nbytes + fc.nbytes + mm.nbytes + 4   # int8 counted as 1 byte
    assert c["io_bytes"] == 4 * (4 * 8 * 8) + 4 * 5
    assert c["compute_precision"] == "float" and c["n_unknown"] == 0


def test_gemm_trans_a_and_batched_matmul(tmp_path):
    nodes = [helper.make_node("Gemm", ["a", "b"], ["y"], transA=1),
             helper.make_node("MatMul", ["q", "k"], ["s"])]
    p = _save(tmp_path, nodes, [_vi("a", [7, 3]), _vi("q", [2, 4, 16, 8]), _vi("k", [2, 4, 8, 16])],
              [_vi("y", None), _vi("s", None)], {"b": np.zeros((7, 5), np.float32)})
    c = graph_cost(p)
    assert c["macs"] == 3 * 5 * 7 + (2 * 4 * 16 * 16) * 8


def test_onnx_attention_op(tmp_path):
    b, h, s, d = 1, 4, 32, 16
    nodes = [helper.make_node("Attention", ["q", "k", "v"], ["o"])]
    p = _save(tmp_path, nodes, [_vi(n, [b, h, s, d]) for n in "qkv"], [_vi("o", None)], {}, opset=23)
    assert graph_cost(p)["macs"] == 2 * b * h * s * s * d   # QK^T and AV


def test_integer_activation_graph_uses_int8_peak(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("MatMulInteger", ["xq", "w"], ["y"])]
    p = _save(tmp_path, nodes, [_vi("x", [1, 64])], [_vi("y", None, TensorProto.INT32)],
              {"s": np.array(0.1, np.float32), "zp": np.array(0, np.uint8), "w": np.zeros((64, 32), np.uint8)})
    c = graph_cost(p)
    assert c["macs"] == 64 * 32 and c["compute_precision"] == "int8"
    r = roofline(c, load_target("rpi5-litert"))
    assert r["peak_precision"] == "int8" and r["peak_gflops"] == 614.4


def test_roofline_and_calibration_math():
    host, rpi = load_target("host-epyc-zen3"), load_target("rpi5-litert")
    cost = {"macs": 5e8, "flops": 1e9, "weight_bytes": 1e6, "io_bytes": 0, "activation_bytes": 0, "bytes": 1e6,
            "compute_precision": "float"}
    r = roofline(cost, rpi)
    assert r["bound"] == "compute" and r["roofline_ms"] == pytest.approx(1e9 / 153.6e9 * 1e3)
    mem_bound = roofline({**cost, "bytes": 1e9}, rpi)
    assert mem_bound["bound"] == "memory" and mem_bound["roofline_ms"] == pytest.approx(1e9 / 17.1e9 * 1e3)
    assert roofline(cost, host, threads=1)["peak_gflops"] == pytest.approx(76.5)   # linear in threads
    est = estimate(cost, rpi, host, measured_p50_ms=20.0, host_threads=2)
    host_roof = 1e9 / 153e9 * 1e3
    assert est["label"] == "estimate"
    assert est["host_efficiency"] == pytest.approx(host_roof / 20.0)
    assert est["calibrated_ms"] == pytest.approx(20.0 * r["roofline_ms"] / host_roof)
