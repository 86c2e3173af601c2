"""`--deploy int8|auto` for an artifact being written: build the INT8 form per runtime, validate, time, choose.

- int8: the INT8 QDQ file replaces exports/<runtime>/ when it passes validation; a failed validation raises
  ExportMismatchError (no artifact is written, as for any export). Slower than FP32 is kept (the user asked for
  it) and recorded as a warning with the ratio.
- auto: the FP32 form (float weights on the method's grid), the artifact's default form (integer weights +
  DequantizeLinear) and the INT8 form are timed in one interleaved loop on the runtime; the fastest form that
  passed its validation is kept. FP32 is always a candidate, so auto never keeps a form that measured slower than
  FP32 in that loop. If INT8 cannot be built or fails validation, the reason is recorded and the others compete.
  On OpenVINO two more candidates join: OpenVINO's own dynamic activation quantization on the default export's
  integer weights, and, when calibration arrays are given, NNCF's static INT8 IR of the compressed model
  (nncf_ptq.py), each validated with the same floors.
- LiteRT (tflite): litert.py builds full-integer static INT8 and dynamic-range INT8 with ai-edge-quantizer on the
  litert-torch float file; int8 keeps the static form (dynamic-range where static does not apply: no BatchNorm and
  no data, or attention), auto times FP32, the default export and both forms interleaved and keeps the fastest
  that passed.
The manifest's exports.<runtime>.deploy records what was asked, the form kept, why, every median and ratio, the
INT8 calibration, its validation figures, and whether its int8 weights equal the method's codes.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, EdgekitError, ExportMismatchError, UnsupportedModelError
from ..model_io import InputSpec

MODES = ("int8", "auto")
CALIB_LIMIT = 100  # calibration samples used from --data (MinMax is stable well before this on CNNs)
HOLDOUT = 16  # further samples from --data, never calibrated on, that validation judges the INT8 file by


def check_request(mode: str | None, runtimes: Sequence[str], data: Any = None) -> None:
    """Fail fast (before any work): unknown mode, or no ONNX Runtime/OpenVINO export to deploy."""
    from . import RUNTIMES

    if mode is None:
        return
    if mode not in MODES:
        raise ConfigError(f"--deploy '{mode}' is not known; choose one of {', '.join(MODES)}")
    if not any(rt in RUNTIMES or rt == "tflite" for rt in runtimes):
        raise ConfigError(f"--deploy {mode} needs --target onnxruntime, openvino or tflite (or a target profile of "
                          "one of them)")


def calibration_samples(data: Any, specs: Sequence[InputSpec], limit: int = CALIB_LIMIT + HOLDOUT
                        ) -> list[tuple] | None:
    """Input tuples at the artifact's batch size from a DataSource of arrays (None without data, or for text data:
    it feeds the method; INT8 then goes data-free or dynamic, and the record says which)."""
    if data is None or not getattr(data, "tensors", None):
        return None
    ins = data.model_inputs(len(specs))  # training data: its label array left out
    if len(ins) != len(specs):
        raise ConfigError(f"--data holds {len(data.tensors)} arrays but the model has {len(specs)} inputs")
    if len(ins) != len(data.tensors):
        data = type(data)(ins, source=data.source)
    bs = specs[0].shape[0]
    out = []
    for batch in data.batches(bs, limit * bs):
        if batch[0].shape[0] != bs:
            continue
        row = []
        for t, s in zip(batch, specs):
            if list(t.shape) != list(s.shape):
                raise ConfigError(f"--data sample shape {list(t.shape)} does not match input '{s.name}' {s.shape}")
            row.append(t.to(getattr(torch, s.dtype)))
        out.append(tuple(row))
    return out


def _install(src: Path, dest: Path) -> None:
    """Replace an export file (and an OpenVINO .bin next to it) with another form."""
    shutil.copy2(src, dest)
    if src.suffix == ".xml":
        shutil.copy2(src.with_suffix(".bin"), dest.with_suffix(".bin"))


def _bf16_form(dest: Path, out_dir: Path) -> Path | None:
    """The OpenVINO IR `dest` with INFERENCE_PRECISION_HINT=bf16 in its rt_info runtime_options, written under
    out_dir; None where OpenVINO's CPU plugin has no native bf16 here (there it would be emulated, not faster)."""
    from ..runtimes import OV_PRECISION_KEY, ov_bf16_capable

    if not ov_bf16_capable():
        return None
    import openvino as ov

    m = ov.Core().read_model(str(dest))
    m.set_rt_info("bf16", OV_PRECISION_KEY)
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(m, str(out_dir / "model.xml"), compress_to_fp16=False)
    return out_dir / "model.xml"


def _float_form(model: nn.Module, specs: Sequence[InputSpec], rt: str, build: Path, dest: Path) -> dict[str, Any]:
    """Install the FP32 form and validate it as any fp32 export (1e-4 of scale)."""
    from ..export.validate import validate

    _install(build / ("float.onnx" if rt == "onnxruntime" else "float_ov.xml"), dest)
    return validate(model, specs, dest, rt, "fp32")


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    """What the manifest keeps about the INT8 build (validation and speed are recorded separately)."""
    keys = ("form", "format", "activations", "weights", "weight_scales_from_codes", "calibration", "weight_codes",
            "ort_kernels")
    out = {k: rec[k] for k in keys if k in rec}
    out["left_in_float"] = sorted(rec.get("left_in_float", {}))
    return out


def _one(model: nn.Module, specs: Sequence[InputSpec], root: Path, rt: str, entry: dict[str, Any], mode: str,
         calib: list | None, codes: dict, work: Path, options: dict[str, Any]) -> None:
    from . import deploy_int8

    dest = root / entry["file"]
    cand = work / rt / ("model.onnx" if rt == "onnxruntime" else "model.xml")
    note: dict[str, Any] = {"requested": mode}
    # OpenVINO's own dynamic activation quantization on the default export's integer weights (what NNCF weight
    # compression users get by default): a fourth candidate for auto, judged by the same floors
    ov_dq = rt == "openvino" and mode == "auto" and bool(codes)
    # OpenVINO's bf16 compute on a host that has it natively (AMX / AVX-512 BF16): what OpenVINO does by default with
    # an FP32 IR there, which edgekit otherwise pins to f32. The same IR with the precision in its rt_info (so every
    # reader, and OpenVINO itself, opens it that way); judged by the same floors, a fallback where INT8 fails them
    bf16 = None
    if rt == "openvino" and mode == "auto":
        try:
            bf16 = _bf16_form(dest, work / rt / "bf16")
        except Exception as e:  # noqa: BLE001 - one candidate fewer, said in the record
            note["ov_bf16_error"] = str(e).splitlines()[0][:300]
    try:
        others = {"default": dest, **({"ov-dynamic-quant": (dest, True)} if ov_dq else {}),
                  **({"ov-bf16": bf16} if bf16 else {})} if mode == "auto" else None
        rec = deploy_int8(model, specs, cand, rt, calib, codes, candidates=others, work_dir=work / "build",
                          nncf_ptq=rt == "openvino" and mode == "auto", **options)
    except (EdgekitError, RuntimeError, ValueError, KeyError) as e:
        if mode == "int8":
            if isinstance(e, EdgekitError):
                raise
            raise UnsupportedModelError(f"INT8 deploy for {rt} failed: {str(e).splitlines()[0][:300]}") from e
        entry["deploy"] = {**note, "form": "default", "why": f"INT8 could not be built: {str(e).splitlines()[0][:300]}"}
        return
    speed, val = rec["speed"], rec["validation"]
    note.update(int8=_summary(rec), int8_validation=val, speed=speed)
    ratio = speed["ratio_to_fp32"]["int8"]
    if mode == "int8":
        if not rec["passed"]:
            hint = next((v["reason"] for v in rec["weight_codes"].get("not_exact", {}).values()), None)
            raise ExportMismatchError(f"{rt} INT8 file failed validation: {'; '.join(val['failed'])}"
                                      + (f"; the method's weights did not fit int8 exactly: {hint}" if hint else "")
                                      + "; no artifact was written (try --data FILE.npy for calibrated ranges, or "
                                      "--deploy auto)")
        pick, why = "int8", "requested (--deploy int8)"
        if ratio > 1:
            cause = ((speed.get("slower") or {}).get("int8") or {}).get("summary")
            note["warning"] = (f"INT8 measured {ratio:.2f}x FP32's latency (slower) on this host"
                               + (f": {cause.split('; ', 1)[-1]}" if cause else ""))
    else:
        ok = {"fp32": True, "default": True, "int8": rec["passed"]}
        # OpenVINO run-time forms of the default export (dynamic quantization on the same file, bf16 on a copy that
        # carries its precision): judged by the same floors on the same inputs
        ov_forms = {"ov-dynamic-quant": ("ov_dynamic_quant_validation", "OpenVINO dynamic quantization", dest, True),
                    "ov-bf16": ("ov_bf16_validation", "OpenVINO bf16", bf16, False)}
        ov_forms = {k: v for k, v in ov_forms.items() if k in (others or {})}
        if ov_forms:
            from . import check

            inputs = check.validation_inputs(specs, options.get("validation") or calib)
        for k, (key, _, path, dq) in ov_forms.items():
            v = check.fidelity(model, path, rt, inputs, options.get("floors"), threads=options.get("threads"),
                               ov_dynamic_quant=dq)
            v["inputs"] = rec["validation"].get("inputs")
            note[key], ok[k] = v, v["passed"]
        nrec = rec.get("nncf_ptq")
        if nrec is not None:
            note["nncf_ptq"] = nrec
            ok["nncf-ptq"] = bool((nrec.get("validation") or {}).get("passed"))
        med = speed["median_ms"]
        pick = min((k for k in med if ok.get(k)), key=lambda k: med[k])
        times = ", ".join(f"{k} {v:.3g} ms" for k, v in med.items())
        why = f"fastest validated form on this host ({times})"
        if not rec["passed"]:
            why += f"; int8 rejected: {'; '.join(val['failed'])}"
        for k, (key, label, _, _) in ov_forms.items():
            if not ok[k]:
                why += f"; {label} rejected: {'; '.join(note[key]['failed'])}"
        if nrec is not None and not ok["nncf-ptq"]:
            why += "; NNCF INT8 rejected: " + (nrec.get("error") or "; ".join(nrec["validation"]["failed"]))
    note.update(form={"int8": rec["form"], "default": "default", "fp32": "fp32", "nncf-ptq": "int8-nncf-ptq",
                      "ov-dynamic-quant": "openvino-dynamic-quantization", "ov-bf16": "openvino-bf16"}[pick], why=why)
    if pick == "int8":
        _install(cand, dest)
        note["default_validation"] = entry["validation"]
        entry.update(precision="int8", validation=val)
    elif pick == "nncf-ptq":
        _install(cand.parent / "nncf" / "model.xml", dest)
        note["default_validation"] = entry["validation"]
        entry.update(precision="int8", validation=note["nncf_ptq"]["validation"])
    elif pick == "ov-dynamic-quant":  # same file; its recorded runtime_config turns the quantization on for readers
        note["default_validation"] = entry["validation"]
        entry.update(validation=note.pop("ov_dynamic_quant_validation"))
    elif pick == "ov-bf16":  # the IR with its bf16 precision in rt_info
        _install(bf16, dest)
        note["default_validation"] = entry["validation"]
        entry.update(precision="bf16", validation=note.pop("ov_bf16_validation"))
    elif pick == "fp32":
        note["default_validation"] = entry["validation"]
        entry.update(precision="fp32", validation=_float_form(model, specs, rt, work / "build", dest))
    entry["deploy"] = note


def deploy_exports(model: nn.Module, specs: Sequence[InputSpec], root: Path, exports: dict[str, dict[str, Any]],
                   mode: str, data: Any = None, on_step: Callable[[str], None] = lambda _s: None,
                   options: dict[str, Any] | None = None) -> None:
    """Apply `mode` to every export entry of an artifact being staged at root (entries are updated in place)."""
    from ..quant import get_codes
    from . import RUNTIMES

    samples = calibration_samples(data, specs)
    calib, held = samples, None
    if samples and len(samples) >= 2 * HOLDOUT:  # hold the last HOLDOUT out of calibration
        calib, held = samples[:-HOLDOUT], samples[-HOLDOUT:]
    if not samples and (options or {}).get("input_range") is not None:  # judge on inputs inside the stated range
        from .check import range_inputs

        held = range_inputs(specs, options["input_range"])
    codes = get_codes(model)
    with tempfile.TemporaryDirectory(prefix="edgekit-deploy-") as tmp:
        for rt, entry in exports.items():
            if rt == "tflite":  # LiteRT: ai-edge-quantizer forms on the litert-torch file (litert.py)
                from .litert import deploy_entry

                on_step(f"deploy {mode} {rt}")
                deploy_entry(model, specs, root, entry, mode, calib, codes, Path(tmp),
                             {**(options or {}), "validation": held})
                continue
            if rt not in RUNTIMES:
                entry["deploy"] = {"requested": mode, "form": "default", "why": f"INT8 deploy for {rt} is not "
                                   "available"}
                continue
            on_step(f"deploy {mode} {rt}")
            _one(model, specs, root, rt, entry, mode, calib, codes, Path(tmp), {**(options or {}), "validation": held})
