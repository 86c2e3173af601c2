"""Lean exports (`edgekit export ART --target openvino` from a compress artifact's model.onnx, no PyTorch model) are
checked against ONNX Runtime; a deep model's float32 noise can pass the fixed fp32 max_abs, so an over-tolerance gap
is judged against ONNX Runtime's own noise (all graph optimizations vs none). The rule must still reject real errors."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.export.onnx_source import LEAN_MAX_ABS_FACTOR, _ort_noise, within_noise
from edgekit.export.validate import FP32_NOISE_FACTOR, TOLERANCES
from edgekit.model_io import InputSpec

TOL = TOLERANCES["fp32"]
NOISE = {"max_abs_scaled": 4e-5, "rel_l2": 2e-6}


def _f(max_abs_scaled: float, rel_l2: float, cosine: float = 0.9999999) -> dict:
    return {"max_abs_scaled": max_abs_scaled, "rel_l2": rel_l2, "cosine": cosine}


def test_noise_level_gap_passes_and_real_errors_fail():
    assert within_noise(_f(1.2e-4, 3e-6), NOISE, TOL, "fp32")  # the SmolLM2 case: 3x the yardstick, rel_l2 tiny
    # a broad error (every element 0.1% off) fails on rel_l2 even when single elements look like noise
    assert not within_noise(_f(1e-4, 1e-3), NOISE, TOL, "fp32")
    # one element far above the noise fails on max_abs
    assert not within_noise(_f(LEAN_MAX_ABS_FACTOR * 4e-5 * 1.5, 3e-6), NOISE, TOL, "fp32")
    assert not within_noise(_f(1.2e-4, 3e-6, cosine=0.999), NOISE, TOL, "fp32")  # cosine stays a hard floor
    assert not within_noise(_f(1.2e-4, 3e-6), NOISE, TOL, "fp16")  # other precisions keep their tolerances
    assert not within_noise(_f(1.2e-4, 3e-6), {}, TOL, "fp32")  # no yardstick, no fallback
    big = {"max_abs_scaled": 1.0, "rel_l2": 1.0}  # a noisy yardstick cannot lift rel_l2 past 3x itself
    assert within_noise(_f(0.5, FP32_NOISE_FACTOR * 0.9), big, TOL, "fp32")


def test_ort_noise_measures_fusion_reordering(tmp_path):
    """A chain of MatMul + Add + Relu (fusable): the yardstick is finite, small, per output, and over 3 inputs."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    nodes, inits, prev = [], [], "x"
    for i in range(8):
        w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) / 8, f"w{i}")
        b = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), f"b{i}")
        inits += [w, b]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        prev = f"r{i}"
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 64])
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    noise = _ort_noise(p, [InputSpec("x", [1, 64], "float32")])
    assert set(noise) == {prev}
    assert all(np.isfinite(v) and 0 <= v < 1e-3 for v in noise[prev].values())
