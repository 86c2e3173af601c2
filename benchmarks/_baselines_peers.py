"""What a user would run instead of edgekit: NNCF (PTQ, weight compression) and ONNX Runtime quantization.

Each builder writes exports/<runtime>/... into an artifact folder from the FP32 files of `Context`, with the tools'
documented defaults except where stated. No torch twin exists for these files: edgekit's validation is skipped.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from _baselines_build import Context, ModelSpec, tflite_specs, write_art

NO_VALIDATION = {"skipped": "third-party quantized file: no torch model computes it, so no reference to validate"}


@contextlib.contextmanager
def captured_fds() -> Iterator[None]:
    """fds 1 and 2 into a temp file while TensorFlow/absl log at C level (ai-edge-quantizer); dropped after."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved_fd in ((1, saved[0]), (2, saved[1])):
                os.dup2(saved_fd, fd)
                os.close(saved_fd)


def _ov_weight_types(model: Any) -> dict[str, int]:
    """Count of weight constants per element type (what the file really stores)."""
    c: Counter = Counter()
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2:
            c[str(op.get_output_element_type(0))] += 1
    return dict(c)


def _save_ov(model: Any, root: Path) -> Path:
    import openvino as ov

    xml = root / "exports" / "openvino" / "model.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def nncf_ptq(spec: ModelSpec, ctx: Context, root: Path) -> dict[str, Any]:
    """nncf.quantize on the OpenVINO FP32 model, 300 calibration samples, defaults (+ TRANSFORMER type for MiniLM)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(ctx.xml))
    names = [p.get_any_name() for p in model.inputs]
    data = nncf.Dataset([dict(zip(names, s)) for s in ctx.calib()])
    kw: dict[str, Any] = {"subset_size": len(ctx.calib())}
    if spec.nncf_type == "transformer":
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    q = nncf.quantize(model, data, **kw)
    xml = _save_ov(q, root)
    info = {"tool": f"nncf {nncf.__version__} quantize (INT8 weights+activations)", "calibration_samples":
            len(ctx.calib()), "options": {k: str(v) for k, v in kw.items()}, "weight_types": _ov_weight_types(q),
            "validation": NO_VALIDATION, "precision": "int8"}
    write_art(root, spec, {"openvino": xml}, info)
    return info


def nncf_wc(spec: ModelSpec, ctx: Context, root: Path, bits: int) -> dict[str, Any]:
    """nncf.compress_weights, data-free: INT8_ASYM, or INT4_SYM with groups of 128, ADJUST fallback for widths 128
    does not divide (NNCF keeps its defaults for embeddings / last layer and ratio)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(ctx.xml))
    kw: dict[str, Any] = ({"mode": nncf.CompressWeightsMode.INT8_ASYM} if bits == 8 else
                          {"mode": nncf.CompressWeightsMode.INT4_SYM, "group_size": 128,
                           # 576-wide inputs (SmolLM2) do not split into 128s: NNCF's ADJUST picks a divisor (64)
                           "advanced_parameters": nncf.AdvancedCompressionParameters(
                               group_size_fallback_mode=nncf.quantization.advanced_parameters.GroupSizeFallbackMode.ADJUST)})
    q = nncf.compress_weights(model, **kw)
    xml = _save_ov(q, root)
    info = {"tool": f"nncf {nncf.__version__} compress_weights", "options": {k: str(v) for k, v in kw.items()},
            "weight_types": _ov_weight_types(q), "validation": NO_VALIDATION, "precision": f"w{bits}"}
    write_art(root, spec, {"openvino": xml}, info)
    return info


class _Reader:
    """onnxruntime CalibrationDataReader over a list of positional samples."""

    def __init__(self, names: list[str], samples: list[list[np.ndarray]]):
        self.it = iter([dict(zip(names, s)) for s in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:  # pragma: no cover - quantize_static reads once
        raise NotImplementedError


def ort_static(spec: ModelSpec, ctx: Context, root: Path, per_channel: bool) -> dict[str, Any]:
    """quantize_static, QDQ, MinMax, its default int8 types, on the pre-processed FP32 ONNX."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )

    CalibrationDataReader.register(_Reader)
    pre = ctx.pre()
    names = [i.name for i in ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()]
    out = root / "exports" / "onnxruntime" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    # CalibMaxIntermediateOutputs only bounds memory (ranges are merged every 8 samples; min/max merge is exact):
    # without it the calibrator holds every activation of all samples at once (SmolLM2: > 24 GB).
    quantize_static(str(pre), str(out), _Reader(names, ctx.calib()), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, extra_options={"CalibMaxIntermediateOutputs": 8})
    info = {"tool": f"onnxruntime {ort.__version__} quantize_static (QDQ, MinMax, "
                    f"{'per-channel' if per_channel else 'per-tensor'})", "calibration_samples": len(ctx.calib()),
            "preprocess": ctx.pre_note(), "validation": NO_VALIDATION, "precision": "int8"}
    write_art(root, spec, {"onnxruntime": out}, info)
    return info


def ort_dynamic(spec: ModelSpec, ctx: Context, root: Path) -> dict[str, Any]:
    """quantize_dynamic with its defaults (int8 weights, activations quantized at run time)."""
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic

    out = root / "exports" / "onnxruntime" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(ctx.pre()), str(out))
    info = {"tool": f"onnxruntime {ort.__version__} quantize_dynamic (defaults)", "preprocess": ctx.pre_note(),
            "validation": NO_VALIDATION, "precision": "int8"}
    write_art(root, spec, {"onnxruntime": out}, info)
    return info


def litert(spec: ModelSpec, ctx: Context, root: Path, static: bool) -> dict[str, Any]:
    """ai-edge-quantizer on the FP32 LiteRT file: dynamic-range INT8 (int8 weights, activations quantized at run
    time) or static INT8 (int8 weights and activations, 300 calibration samples padded to the file's shapes)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    out = root / "exports" / "tflite" / "model.tflite"
    out.parent.mkdir(parents=True, exist_ok=True)
    with captured_fds():
        q = quantizer.Quantizer(str(ctx.tflite))
        q.load_quantization_recipe(recipe.static_wi8_ai8() if static else recipe.dynamic_wi8_afp32())
        kw: dict[str, Any] = {}
        if static:
            interp = Interpreter(model_path=str(ctx.tflite))
            key = next(iter(interp.get_signature_list()))
            det = interp.get_signature_runner(key).get_input_details()  # litert-torch stores int64 inputs as int32
            names = list(det)
            data = [{n: _fit(a, tuple(det[n]["shape"]), det[n]["dtype"]) for n, a in zip(names, sample)}
                    for sample in ctx.calib()]
            kw["calibration_result"] = q.calibrate({key: data}, num_threads=2)
        q.quantize(**kw).export_model(str(out), overwrite=True)
    info = {"tool": "ai-edge-quantizer " + ("static_wi8_ai8 (calibrated)" if static else "dynamic_wi8_afp32"),
            "calibration_samples": len(ctx.calib()) if static else 0, "validation": NO_VALIDATION,
            "precision": "int8"}
    write_art(root, spec, {"tflite": out}, info, static=tflite_specs(spec))  # LiteRT files have static shapes
    return info


def _fit(a: np.ndarray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A calibration array cut or zero-padded to a static shape and cast to the file's input type (token ids and
    masks: padding is mask 0)."""
    out = np.zeros(shape, dtype)
    sl = tuple(slice(0, min(x, y)) for x, y in zip(a.shape, shape))
    out[sl] = a[sl]
    return out
