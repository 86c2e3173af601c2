"""Tiny ONNX files whose work is known by construction: a chain of n (d x d) MatMuls on a (rows, d) input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D, ROWS = 256, 64


def matmul_chain(path: Path, n: int, d: int = D) -> Path:
    """Write an ONNX file of n chained MatMuls (dynamic batch axis, so the rows come from the input hint)."""
    rng = np.random.default_rng(n)
    inits, nodes, cur = [], [], "x"
    for i in range(n):
        inits.append(numpy_helper.from_array((rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"h{i}"]))
        cur = f"h{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    graph = helper.make_graph(nodes, f"chain{n}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return Path(path)


def chain_artifact(root: Path, n: int) -> Path:
    """An artifact folder holding only a validated-on-nothing model.onnx (ONNX Runtime runs it) + manifest."""
    from edgekit.artifact import write_manifest

    matmul_chain(root / "model.onnx", n)
    write_manifest(root, {"model": "model.onnx", "inputs": [{"name": "x", "shape": [ROWS, D], "dtype": "float32"}],
                          "exports": {}})
    return root
