"""Export an existing .onnx file (no PyTorch source): ONNX Runtime on the file itself is the reference."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx.external_data_helper

from .. import artifact as art
from ..errors import ConfigError, ExportMismatchError, ModelLoadError
from ..model_io import InputSpec, example_inputs, parse_input_shape
from .validate import FP32_NOISE_FACTOR, TOLERANCES, check_finite, compare

_ONNX_DT = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8", 9: "bool"}


def onnx_input_specs(path: Path) -> list[InputSpec]:
    """Static input specs from the graph; dynamic dims need a value, so they are refused with a fix."""
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(f"{path} is not a valid ONNX file ({(str(e).strip().splitlines() or [type(e).__name__])[0][:160]})") \
            from None
    if not m.graph.node or not m.graph.output:
        raise ModelLoadError(f"{path} is not a usable ONNX model (empty graph); pass the exported model file")
    inits = {i.name for i in m.graph.initializer}
    specs = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if not t.HasField("shape") or any(d <= 0 for d in dims):
            raise ConfigError(f"{path}: input '{i.name}' has dynamic dims {dims}; re-export it with static shapes")
        if t.elem_type not in _ONNX_DT:
            raise ConfigError(f"{path}: input '{i.name}' has ONNX element type {t.elem_type}, which edgekit cannot "
                              f"feed (supported: {', '.join(_ONNX_DT.values())})")
        specs.append(InputSpec(i.name, dims, _ONNX_DT[t.elem_type]))
        parse_input_shape("x".join(map(str, dims)))  # the same size limits as --input-shape
    if not specs:
        raise ModelLoadError(f"{path} has no graph inputs to feed")
    return specs


def _copy_self_contained(src: Path, dst: Path) -> None:
    """Copy an ONNX file with its external data (if any) folded in: the artifact must not depend on files outside
    it. External data paths are resolved by onnx relative to the file and may not leave its folder."""
    m = onnx.load(str(src), load_external_data=False)
    if not any(onnx.external_data_helper.uses_external_data(t) for t in m.graph.initializer):
        shutil.copy2(src, dst)
        return
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and (Path(e.value).is_absolute() or ".." in Path(e.value).parts):
                raise ModelLoadError(f"{src}: external data '{e.value}' lies outside the model's folder; refusing it")
    try:
        onnx.load_external_data_for_model(m, str(src.parent))
    except Exception as e:
        raise ModelLoadError(f"{src}: its external data could not be read ({str(e)[:160]}); keep the data file(s) "
                             "next to the .onnx") from None
    if m.ByteSize() > 2_000_000_000:
        onnx.save_model(m, str(dst), save_as_external_data=True, location=dst.name + ".data")
    else:
        onnx.save_model(m, str(dst))


def export_onnx_file(src: Path, runtime: str, out: Path | None, overwrite: bool, fp16: bool,
                     step: Callable[[str], None]) -> Path:
    """Artifact with the ONNX file and a runtime export validated against ONNX Runtime."""
    if runtime == "tflite":
        raise ConfigError("a .tflite export needs the PyTorch model (litert-torch); pass the .pt/.pt2 instead of .onnx")
    if out is None:
        raise ConfigError("pass -o DIR for the artifact folder")
    specs = onnx_input_specs(src)
    with art.staging(out, overwrite, protect=[src]) as root:
        _copy_self_contained(src, root / "model.onnx")
        entry = _runtime_export(root, runtime, specs, "fp16" if fp16 else "fp32", fp16, step, src.name)
        man = {"kind": "export", "source": {"path": str(src), "kind": "onnx", "sha256": art.sha256_file(src)},
               "model": "model.onnx", "inputs": [s.to_dict() for s in specs], "exports": {runtime: entry}}
        art.write_manifest(root, man)
    return Path(out)


def export_lean_artifact(src: Path, runtime: str, out: Path | None, overwrite: bool, fp16: bool,
                         step: Callable[[str], None], target: str | None = None) -> Path:
    """One more runtime for an artifact written without its PyTorch program (compress's default): built from the
    artifact's model.onnx (validated on ONNX Runtime when it was compressed) and validated against ONNX Runtime on
    that file. LiteRT needs the PyTorch program, so it is refused with the fix."""
    if runtime == "tflite":
        raise ConfigError(f"{src} has no PyTorch program (compress keeps only what the runtimes run), and a LiteRT "
                          "export is made from one; re-run `edgekit compress ... --target tflite`, or compress with "
                          "--keep-program to export it later")
    from ..model_io import InputSpec

    dest = Path(out) if out else Path(src)
    with art.staging(dest, overwrite=overwrite or dest.resolve() == Path(src).resolve(), base=Path(src),
                     protect=[src]) as root:
        man = art.read_manifest(root, verify=False)  # a copy of the artifact verified by staging
        specs = [InputSpec(i["name"], i["shape"], i.get("dtype", "float32"),
                           {int(k): str(v) for k, v in (i.get("dynamic") or {}).items()}, i.get("high"))
                 for i in man["inputs"]]
        if runtime in man.get("exports", {}):
            shutil.rmtree(root / "exports" / runtime, ignore_errors=True)
        prec = "fp16" if fp16 else man.get("export_precision", "fp32")
        entry = _runtime_export(root, runtime, specs, prec if prec in TOLERANCES else "fp32", fp16, step,
                                man.get("model", "model.onnx"))
        entry["built_from"] = "model.onnx (the artifact has no PyTorch program)"
        if target:
            entry["target"] = target
        man.setdefault("exports", {})[runtime] = entry
        if isinstance(man.get("file_roles"), dict):
            man["file_roles"][entry["file"]] = f"what {runtime} runs (precision {entry['precision']})"
        art.write_manifest(root, man)
    return dest


LEAN_MAX_ABS_FACTOR = 10.0  # another runtime's kernels (OpenVINO's GEMM blocking, its own exp/erf) move single
# elements more than ORT's fusions do, and vary with its threading: measured on SmolLM2 structured-FFN logits, OV vs
# ORT scaled max_abs 3.6e-5 to 1.2e-4 over runs against an ORT-fusion yardstick of 4.0e-5, with rel_l2 ~3e-6


def within_noise(f: dict, noise: dict, tol: dict, prec: str) -> bool:
    """A lean export over the fixed fp32 tolerance still passes when its gap to ONNX Runtime is float32 noise: cosine
    within tolerance, rel_l2 within max(tolerance, FP32_NOISE_FACTOR x the noise yardstick) (a broad error fails
    here), scaled max_abs within LEAN_MAX_ABS_FACTOR x the yardstick (a single wrong element far above the noise
    fails here). Only for fp32 exports; other precisions keep their fixed tolerances."""
    if prec != "fp32" or not noise or f["cosine"] < tol["cosine"]:
        return False
    return (f["rel_l2"] <= max(tol["rel_l2"], FP32_NOISE_FACTOR * noise["rel_l2"]) and
            f["max_abs_scaled"] <= LEAN_MAX_ABS_FACTOR * noise["max_abs_scaled"])


def _ort_noise(onnx_path: Path, specs: list[InputSpec]) -> dict[str, dict]:
    """Float32 noise of this model with no float64 copy to compare against (a lean artifact has no PyTorch model):
    the largest gap, per output over the 3 validation inputs, between ONNX Runtime with all graph optimizations and
    with none (fusions reorder the same float32 sums, as another runtime's kernels do). Deep models (SmolLM2's 30
    layers) reach ~1e-4 scaled max_abs this way, over the fixed fp32 tolerance although nothing is wrong."""
    import onnxruntime as ort

    sessions = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level, so.log_severity_level = level, 3
        sessions.append(ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]))
    names = [o.name for o in sessions[0].get_outputs()]
    out: dict[str, dict] = {}
    for seed in range(3):
        feeds = {s.name: t.numpy() for s, t in zip(specs, example_inputs(specs, seed))}
        for name, a, b in zip(names, sessions[0].run(None, feeds), sessions[1].run(None, feeds)):
            f = compare(np.asarray(a), np.asarray(b))
            o = out.setdefault(name, {"max_abs_scaled": 0.0, "rel_l2": 0.0})
            for k in o:
                o[k] = max(o[k], f[k])
    return out


def _runtime_export(root: Path, runtime: str, specs: list[InputSpec], prec: str, fp16: bool,
                    step: Callable[[str], None], what: str) -> dict:
    """exports/<runtime>/ from root/model.onnx, validated against ONNX Runtime on that file; the manifest entry."""
    from ..runtimes import open_session

    ref = open_session(root / "model.onnx", "onnxruntime")
    d = root / "exports" / runtime
    d.mkdir(parents=True)
    if runtime == "onnxruntime":
        path = d / "model.onnx"
        _copy_self_contained(root / "model.onnx", path)
    else:
        from .openvino import convert

        step("export openvino")
        path = convert(root / "model.onnx", d, fp16)
    step(f"validate {runtime}")
    sess = open_session(path, runtime)
    worst: dict[str, dict] = {}
    tol = TOLERANCES[prec]
    noise: dict[str, dict] | None = None  # float32 noise yardstick, computed only when the fixed tolerance fails
    for seed in range(3):
        feeds = {s.name: t.numpy() for s, t in zip(specs, example_inputs(specs, seed))}
        for name, r, g in zip(ref.output_names, ref.run(feeds), sess.run(feeds)):
            check_finite(np.asarray(r), f"ONNX Runtime output '{name}' of {what}")
            check_finite(np.asarray(g), f"{runtime} output '{name}'")
            f = compare(np.asarray(r), np.asarray(g))
            if f["max_abs_scaled"] > tol["max_abs"] or f["cosine"] < tol["cosine"]:
                if noise is None:
                    noise = _ort_noise(root / "model.onnx", specs)
                n = noise.get(name) or {}
                if not within_noise(f, n, tol, prec):
                    raise ExportMismatchError(f"{runtime} output '{name}' differs from ONNX Runtime: {f}; "
                                              f"tolerance {tol}" + (f", or within ONNX Runtime's own float32 noise "
                                                                    f"{n} (rel_l2 x{FP32_NOISE_FACTOR:g}, max_abs x"
                                                                    f"{LEAN_MAX_ABS_FACTOR:g})" if n else "") +
                                              "; no artifact was written")
                f["within_float32_noise"] = {k: float(f"{v:.3g}") for k, v in n.items()}
            if name not in worst or f["max_abs_scaled"] > worst[name]["max_abs_scaled"]:
                worst[name] = f
    return {"file": str(path.relative_to(root)), "precision": prec,
            "validation": {"reference": "onnxruntime", "outputs": worst}}
