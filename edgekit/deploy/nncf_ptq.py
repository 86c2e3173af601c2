"""NNCF post-training INT8 (static int8 weights and activations) for OpenVINO: a candidate of `--deploy auto` on
OpenVINO when calibration samples are given (`--data` / `--deploy-data` arrays).

Why it is a candidate: on a transformer, the INT8 file edgekit writes for ONNX Runtime (dynamic INT8 MatMuls)
reaches OpenVINO as DynamicQuantizeLinear + MatMulInteger, which OpenVINO ran slower than FP32 (MiniLM 1.29x in
the peer run of benchmarks/results/baselines.md), and OpenVINO's own dynamic activation quantization reached
0.65x; NNCF's static PTQ with `model_type=TRANSFORMER` (its ignored scopes and SmoothQuant for the outlier
channels that collapse one static range per tensor) measured 0.45x at probe 0.826 against FP32's 0.828 in the
same run. edgekit's part is the one the issue asks for: feed NNCF the compressed model's float IR and the
calibration samples, validate the result with the deploy step's floors on the held-out samples, time it in the
same interleaved loop as every other form, and keep it only when it is the fastest that passed.

Decisions:
- Input: the float IR of the compressed model (its weights on the method's grid), not the default export, whose
  integer weights + Convert/Multiply decompression NNCF would see as activations.
- Weights: NNCF sets its own int8 weight scales (symmetric per channel); the method's codes cannot be passed to
  it, so this file's weights are not checked against them (the record says so) -- unlike the QDQ form.
- Transformer or not: a Softmax in the float graph selects `ModelType.TRANSFORMER`; otherwise NNCF's defaults.
- No data, no candidate: NNCF needs samples, and edgekit's data-free ranges go through the QDQ form.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx


def has_softmax(float_onnx: Path) -> bool:
    return any(n.op_type == "Softmax" for n in onnx.load(str(float_onnx), load_external_data=False).graph.node)


def quantize(float_xml: Path, out_xml: Path, calibration: Sequence[Sequence[Any]], transformer: bool
             ) -> dict[str, Any]:
    """nncf.quantize(float IR, calibration) -> out_xml (+ .bin); returns what the record keeps."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(float_xml))
    names = [p.get_any_name() for p in model.inputs]
    rows = [dict(zip(names, (t.numpy() if hasattr(t, "numpy") else np.asarray(t) for t in s))) for s in calibration]
    kw: dict[str, Any] = {"subset_size": len(rows)}
    if transformer:
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    nncf.set_log_level(logging.ERROR)
    q = nncf.quantize(model, nncf.Dataset(rows), **kw)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in q.get_ops())
    return {"form": "int8-nncf-ptq", "tool": f"nncf {nncf.__version__} quantize (static INT8 weights+activations)",
            "options": {k: str(v) for k, v in kw.items()}, "fake_quantize_ops": int(fq),
            "calibration": {"method": "nncf.quantize (its MinMax defaults)", "samples": len(rows)},
            "weight_codes": "not checked: NNCF sets its own int8 weight scales"}
