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
from .validate import TOLERANCES, check_finite, compare

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
    worst = {}
    tol = TOLERANCES[prec]
    for seed in range(3):
        feeds = {s.name: t.numpy() for s, t in zip(specs, example_inputs(specs, seed))}
        for name, r, g in zip(ref.output_names, ref.run(feeds), sess.run(feeds)):
            check_finite(np.asarray(r), f"ONNX Runtime output '{name}' of {what}")
            check_finite(np.asarray(g), f"{runtime} output '{name}'")
            f = compare(np.asarray(r), np.asarray(g))
            if f["max_abs_scaled"] > tol["max_abs"] or f["cosine"] < tol["cosine"]:
                raise ExportMismatchError(f"{runtime} output '{name}' differs from ONNX Runtime: {f}; "
                                          f"tolerance {tol}; no artifact was written")
            worst[name] = f
    return {"file": str(path.relative_to(root)), "precision": prec,
            "validation": {"reference": "onnxruntime", "outputs": worst}}
