"""Write a static INT8 QDQ ONNX with onnxruntime.quantization: activations per tensor, weights per channel.

The form: uint8 activations (asymmetric, per tensor), int8 weights (symmetric, per output channel, levels
-127..127), int32 biases, QuantFormat.QDQ. ONNX Runtime's CPU provider fuses DQ -> Conv/Gemm/Add -> Q into its
integer kernels (QLinearConv, QGemm, QLinearAdd); u8 x s8 is the VNNI-friendly pair that ORT recommends for x86
(no reduce_range on VNNI hosts). OpenVINO reads the same file as FakeQuantize and runs its int8 kernels.

Decisions, and why:
- Quantize from a float ONNX of the (compressed) model that we export here, not from the artifact's model.onnx:
  quantize_static needs float weights, and the data-free ranges need the exporter's module scopes (ranges.py),
  which onnxslim removes. Methods leave weights on their grid, so the float file holds them exactly (times the
  BatchNorm factor the exporter folds in).
- Weights: per-channel symmetric int8 with the method's own scales where it recorded codes, so its codes become
  the int8 weights with no second rounding (codes.py: TensorQuantOverrides, then checked on the written file);
  per-channel symmetric MinMax for the other weights.
- Ranges: data-free (BatchNorm statistics, ranges.py) are handed to quantize_static through its calibration
  cache (`TensorsData` + `save_tensors_data` + `calibration_cache_path`), the library's own way to supply ranges;
  nodes that would need a range we do not have are passed as `nodes_to_exclude` and stay float. With data,
  quantize_static calibrates itself (MinMax or Percentile).
- No `CalibMaxIntermediateOutputs`: in onnxruntime 1.32 the MinMax calibrator clears each full chunk of samples
  without merging its ranges (calibrate.py collect_data; microsoft/onnxruntime#18893, fix PR #20226 unmerged), so
  only the last (N mod chunk) samples would be calibrated on. Without it, all samples count (the calibrator keeps
  only the per-tensor min/max outputs, which is small for a CNN).
- Gemm/MatMul outputs are not quantized (`OpTypesToExcludeOutputQuantization`): a classifier head then runs as
  QGemm with a float output, and logits keep full precision.
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from ..quant import WeightCode
from ..model_io import InputSpec, example_inputs
from . import codes as C
from . import ranges as R

NO_OUTPUT_Q = ("Gemm", "MatMul")
CALIB_METHODS = ("minmax", "percentile")


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """quantize_static logs a pre-processing hint at WARNING on the root logger on every call."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def export_float(model: nn.Module, specs: Sequence[InputSpec], path: Path) -> dict[str, str]:
    """Float ONNX of `model` at `path` (dynamo + onnxslim); returns BN-output tensor -> BN module (ranges.py)."""
    from ..export.onnx import save_onnx, slim, torch_to_onnx_proto

    raw = torch_to_onnx_proto(model, example_inputs(list(specs)), specs)
    bn_map = R.bn_outputs(raw, model)
    proto = slim(raw)
    names = {o for n in proto.graph.node for o in n.output}
    save_onnx(proto, path)
    return {t: b for t, b in bn_map.items() if t in names}


def data_free_ranges(model: nn.Module, float_path: Path, bn_map: dict[str, str], k: float,
                     input_range: tuple[float, float] | None) -> dict[str, tuple[float, float]]:
    """Per-tensor ranges from BN statistics, propagated through the float graph (ranges.py)."""
    if not bn_map:
        raise UnsupportedModelError(
            f"data-free INT8 needs BatchNorm layers and {type(model).__name__} exported none; pass calibration "
            "data (--data FILE.npy)")
    mods = dict(model.named_modules())
    seeds = {t: R.bn_range(mods[b], k) for t, b in bn_map.items()}
    return R.per_tensor(R.propagate(onnx.load(str(float_path)), seeds, k, input_range))


class _Reader:
    """CalibrationDataReader over a list of positional input tuples."""

    def __init__(self, names: list[str], samples: Sequence[Sequence[Any]]):
        self.rows = [{n: (t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)) for n, t in zip(names, s)}
                     for s in samples]
        self.it = iter(self.rows)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.rows)


def write_qdq(float_path: Path, out_path: Path, input_names: list[str],
              ranges: dict[str, tuple[float, float]] | None = None,
              calibration: Sequence[Sequence[Any]] | None = None, calibrate: str = "minmax",
              codes: dict[str, WeightCode] | None = None) -> dict[str, Any]:
    """quantize_static -> out_path; ranges (data-free) or calibration samples, exactly one of them; `codes` (the
    method's) fix those weights' int8 scales so that the codes are kept exactly (codes.py)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          TensorData, TensorsData, quantize_static, save_tensors_data)

    if (ranges is None) == (calibration is None):
        raise ConfigError("INT8 deploy needs either data-free ranges or calibration samples (exactly one)")
    if calibrate not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method '{calibrate}'; choose one of {', '.join(CALIB_METHODS)}")
    extra: dict[str, Any] = {"OpTypesToExcludeOutputQuantization": list(NO_OUTPUT_Q)}
    scales = C.exact_scales(float_path, codes) if codes else {}
    if scales:
        extra["TensorQuantOverrides"] = C.overrides(scales)
    excluded: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-") as tmp, _quiet_ort():
        cache, reader, method = None, None, CalibrationMethod.MinMax
        if ranges is not None:
            excluded = R.unranged_nodes(onnx.load(str(float_path)), set(ranges), set(NO_OUTPUT_Q))
            td = {n: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                  for n, (lo, hi) in ranges.items()}
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, td), cache)
        else:
            CalibrationDataReader.register(_Reader)
            reader = _Reader(input_names, calibration)
            if calibrate == "percentile":
                method = CalibrationMethod.Percentile
                extra["CalibPercentile"] = 99.999
        quantize_static(str(float_path), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(excluded), calibrate_method=method,
                        calibration_cache_path=str(cache) if cache else None, extra_options=extra)
    return {"activations": "uint8 per tensor (asymmetric)", "weights": "int8 per channel (symmetric, -127..127)",
            "format": "QDQ", "left_in_float": excluded, "weight_scales_from_codes": len(scales),
            "calibration": ({"method": "data-free (BatchNorm statistics)", "tensors": len(ranges)} if ranges is not None
                            else {"method": calibrate, "samples": len(calibration or [])})}


def choose_form(form: str, bn_map: dict[str, str], calibration: Any, float_path: Path) -> str:
    """static (QDQ, ranges known ahead) or dynamic (ranges measured per call).

    auto: static when BatchNorm statistics give data-free ranges, or when calibration data is given and the graph
    has no Softmax; dynamic for the rest (attention models, MLPs), except a CNN with neither BN nor data (error).
    Why: attention and LayerNorm outputs have a few outlier channels, and one static range per tensor collapses
    the rest (README peers: ORT static QDQ per-tensor on MiniLM probe 0.771, SmolLM2 perplexity 80k), while dynamic
    INT8 measures each MatMul input's range on every call (MiniLM 0.819).
    """
    if form not in ("auto", "static", "dynamic"):
        raise ConfigError(f"INT8 form '{form}' is not known; choose auto, static or dynamic")
    if form != "auto":
        return form
    if bn_map:
        return "static"
    ops = {n.op_type for n in onnx.load(str(float_path), load_external_data=False).graph.node}
    if calibration and "Softmax" not in ops:
        return "static"
    if "Softmax" not in ops and ops & {"Conv", "ConvTranspose"}:
        raise UnsupportedModelError("INT8 for a CNN without BatchNorm needs calibration data for its activation "
                                    "ranges (--data FILE.npy); dynamic INT8 covers MatMuls only")
    return "dynamic"


def write_dynamic(float_path: Path, out_path: Path) -> dict[str, Any]:
    """quantize_dynamic: int8 weights per channel, activations quantized per call (ORT: DynamicQuantizeMatMul)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_ort():
        quantize_dynamic(str(float_path), str(out_path), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
    return {"format": "dynamic (quantize_dynamic)", "activations": "uint8 per tensor, range measured on every call",
            "weights": "int8 per channel (symmetric)", "left_in_float": {},
            "calibration": {"method": "none (dynamic: ranges are measured at run time)"}}


def int8_ops(path: Path) -> dict[str, int]:
    """Op histogram of the graph ONNX Runtime actually runs (after its QDQ fusion), for the record and tests."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekit-opt-") as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops: dict[str, int] = {}
        for n in onnx.load(so.optimized_model_filepath).graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def save_json(obj: Any, path: Path) -> None:
    Path(path).write_text(json.dumps(obj, default=str))
