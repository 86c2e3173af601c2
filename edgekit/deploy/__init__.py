"""Deploy: lower a (compressed) model to a runtime's integer kernels, validate it at task level, time it.

First slice, ONNX Runtime and OpenVINO:
- static INT8 QDQ (uint8 activations per tensor, int8 weights per channel) for CNNs, calibrated data-free from
  BatchNorm statistics (ranges.py) or on calibration samples (int8.py);
- dynamic INT8 (int8 weights, activation ranges measured per call) for graphs without BatchNorm that have
  attention, where one static range per tensor collapses (int8.choose_form);
each checked against the float model with stated floors (check.py) and timed interleaved with the FP32 file on the
same runtime. `select.py` is what `edgekit compress --deploy int8|auto` runs per runtime; LiteRT's forms
(full-integer static and dynamic-range through ai-edge-quantizer) are in litert.py. On OpenVINO, `auto` also weighs
OpenVINO's own dynamic activation quantization (select.py) and, with calibration data, NNCF's static INT8
(nncf_ptq.py).

    deploy_int8(model, specs, out_path, runtime="onnxruntime", calibration=None, ...) -> record dict
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..errors import ConfigError
from ..quant import WeightCode
from ..model_io import InputSpec, example_inputs
from . import check, codes as C, int8

RUNTIMES = ("onnxruntime", "openvino")
DEFAULT_K = 6.0


def _ov_convert(onnx_path: Path, xml_path: Path) -> Path:
    """OpenVINO IR of an ONNX file at xml_path (+ .bin); QDQ pairs become FakeQuantize."""
    from ..export.openvino import convert

    with tempfile.TemporaryDirectory(prefix="edgekit-ov-", dir=xml_path.parent) as tmp:
        xml = convert(onnx_path, Path(tmp))
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(xml), xml_path)
        shutil.move(str(xml.with_suffix(".bin")), xml_path.with_suffix(".bin"))
    return xml_path


def build_qdq(model: nn.Module, specs: Sequence[InputSpec], work: Path,
              calibration: Sequence[Sequence[Any]] | None = None, k: float = DEFAULT_K,
              input_range: tuple[float, float] | None = None, calibrate: str = "minmax",
              form: str = "auto", codes: dict[str, WeightCode] | None = None) -> dict[str, Any]:
    """Float ONNX (work/float.onnx) and INT8 ONNX (work/int8.onnx) of `model`; returns the quantize record.

    form: static (QDQ, data-free from BatchNorm or calibrated), dynamic, or auto (int8.choose_form)."""
    work.mkdir(parents=True, exist_ok=True)
    float_path, qdq_path = work / "float.onnx", work / "int8.onnx"
    bn_map = int8.export_float(model, specs, float_path)
    names = [s.name for s in specs]
    if int8.choose_form(form, bn_map, calibration, float_path) == "dynamic":
        return {"form": "int8-dynamic", **int8.write_dynamic(float_path, qdq_path)}
    if calibration:
        rec = int8.write_qdq(float_path, qdq_path, names, calibration=calibration, calibrate=calibrate, codes=codes)
    else:
        rng = int8.data_free_ranges(model, float_path, bn_map, k, input_range)
        rec = int8.write_qdq(float_path, qdq_path, names, ranges=rng, codes=codes)
        rec["calibration"].update(k=k, bn_outputs=len(bn_map),
                                  input_range=list(input_range) if input_range else "none (first layer float)")
    return {"form": "int8-qdq", **rec}


def deploy_int8(model: nn.Module, specs: Sequence[InputSpec], out_path: Path, runtime: str = "onnxruntime",
                calibration: Sequence[Sequence[Any]] | None = None, codes: dict[str, WeightCode] | None = None,
                k: float = DEFAULT_K, input_range: tuple[float, float] | None = None, calibrate: str = "minmax",
                floors: dict[str, float] | None = None, candidates: dict[str, Path] | None = None,
                threads: int = 2, runs: int = 20, work_dir: Path | None = None,
                validation: Sequence[Sequence[Any]] | None = None, form: str = "auto",
                nncf_ptq: bool = False) -> dict[str, Any]:
    """Write the INT8 file for `runtime` at out_path (.onnx, or .xml for OpenVINO), validate it, time it vs FP32.

    calibration: input tuples (None: data-free from BatchNorm statistics). validation: held-out input tuples to
    judge the file on (default: the calibration samples, else the example inputs). codes: the method's codes, checked
    against the file's int8 weights. candidates: more files of this runtime to time in the same loop (e.g. the
    artifact's default export). nncf_ptq (OpenVINO, with calibration): also build NNCF's static INT8 IR
    (nncf_ptq.py) next to out_path (nncf/model.xml), validate it with the same floors and time it as "nncf-ptq";
    its record is rec["nncf_ptq"] (or the reason it could not be built). The record's "passed" is the validation
    verdict; nothing is raised for a failed validation (the caller decides), only for unusable input.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"INT8 deploy supports {', '.join(RUNTIMES)}, not '{runtime}'")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="edgekit-deploy-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        if not (work / "int8.onnx").is_file():
            rec = build_qdq(model, specs, work, calibration, k, input_range, calibrate, form, codes)
            int8.save_json(rec, work / "int8.json")
        else:  # built once per artifact, shared by the runtimes
            import json

            rec = json.loads((work / "int8.json").read_text())
        codes_rec = C.check_codes(work / "int8.onnx", codes or {}, work / "float.onnx")
        rec = {**rec, "weight_codes": codes_rec}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if runtime == "onnxruntime":
            shutil.copy2(work / "int8.onnx", out_path)
            fp32 = work / "float.onnx"
            rec["ort_kernels"] = int8.int8_ops(out_path)
        else:
            _ov_convert(work / "int8.onnx", out_path)
            fp32 = work / "float_ov.xml"
            if not fp32.is_file():
                _ov_convert(work / "float.onnx", fp32)
        val_inputs = check.validation_inputs(specs, validation or calibration)
        judged_on = ("held-out data" if validation else "calibration data" if calibration
                     else "example inputs (seeded random)")
        rec["validation"] = check.fidelity(model, out_path, runtime, val_inputs, floors, threads)
        rec["validation"]["inputs"] = judged_on
        rec["passed"] = rec["validation"]["passed"]
        files = {"fp32": fp32, "int8": out_path, **(candidates or {})}
        if nncf_ptq and runtime == "openvino" and calibration:
            from . import nncf_ptq as N

            nx = out_path.parent / "nncf" / "model.xml"
            try:
                nrec = N.quantize(fp32, nx, calibration, transformer=N.has_softmax(work / "float.onnx"))
                nrec["validation"] = check.fidelity(model, nx, runtime, val_inputs, floors, threads)
                nrec["validation"]["inputs"] = judged_on
                files["nncf-ptq"] = nx
            except Exception as e:  # noqa: BLE001 - NNCF raises its own error classes; an optional candidate that
                # cannot be built is recorded with the reason and the other forms compete
                nrec = {"error": f"NNCF INT8 could not be built: {str(e).splitlines()[0][:300]}"}
            rec["nncf_ptq"] = nrec
        rec["speed"] = check.interleaved(files, runtime, example_inputs(list(specs)), threads, runs=runs)
    return rec


from .select import check_request, deploy_exports  # noqa: E402  (re-exported for edgekit.api)

__all__ = ["deploy_int8", "build_qdq", "deploy_exports", "check_request", "RUNTIMES", "DEFAULT_K"]
