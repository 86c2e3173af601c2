"""Export an existing .onnx file (no PyTorch source): ONNX Runtime on the file itself is the reference."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from .. import artifact as art
from ..errors import ConfigError, ExportMismatchError, ModelLoadError
from ..model_io import InputSpec, example_inputs
from .validate import TOLERANCES, compare

_ONNX_DT = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8", 9: "bool"}


def onnx_input_specs(path: Path) -> list[InputSpec]:
    """Static input specs from the graph; dynamic dims need a value, so they are refused with a fix."""
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(f"{path} is not a valid ONNX file ({str(e).splitlines()[0]})") from None
    inits = {i.name for i in m.graph.initializer}
    specs = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if any(d <= 0 for d in dims):
            raise ConfigError(f"{path}: input '{i.name}' has dynamic dims {dims}; re-export it with static shapes")
        specs.append(InputSpec(i.name, dims, _ONNX_DT.get(t.elem_type, "float32")))
    return specs


def export_onnx_file(src: Path, runtime: str, out: Path | None, overwrite: bool, fp16: bool,
                     step: Callable[[str], None]) -> Path:
    """Artifact with the ONNX file and a runtime export validated against ONNX Runtime."""
    from ..profile.runners import open_session

    if runtime == "tflite":
        raise ConfigError("a .tflite export needs the PyTorch model (litert-torch); pass the .pt/.pt2 instead of .onnx")
    if out is None:
        raise ConfigError("pass -o DIR for the artifact folder")
    specs = onnx_input_specs(src)
    with art.staging(out, overwrite) as root:
        shutil.copy2(src, root / "model.onnx")
        ref = open_session(root / "model.onnx", "onnxruntime")
        d = root / "exports" / runtime
        d.mkdir(parents=True)
        if runtime == "onnxruntime":
            path = d / "model.onnx"
            shutil.copy2(src, path)
        else:
            from .openvino import convert

            step("export openvino")
            path = convert(root / "model.onnx", d, fp16)
        step(f"validate {runtime}")
        prec = "fp16" if fp16 else "fp32"
        sess = open_session(path, runtime)
        worst = {}
        for seed in range(3):
            feeds = {s.name: t.numpy() for s, t in zip(specs, example_inputs(specs, seed))}
            for name, r, g in zip(ref.output_names, ref.run(feeds), sess.run(feeds)):
                f = compare(np.asarray(r), np.asarray(g))
                tol = TOLERANCES[prec]
                if f["max_abs_scaled"] > tol["max_abs"] or f["cosine"] < tol["cosine"]:
                    raise ExportMismatchError(f"{runtime} output '{name}' differs from ONNX Runtime: {f}; "
                                              f"tolerance {tol}; no artifact was written")
                worst[name] = f
        man = {"kind": "export", "source": {"path": str(src), "kind": "onnx", "sha256": art.sha256_file(src)},
               "model": "model.onnx", "inputs": [s.to_dict() for s in specs],
               "exports": {runtime: {"file": str(path.relative_to(root)), "precision": prec,
                                     "validation": {"reference": "onnxruntime", "outputs": worst}}}}
        art.write_manifest(root, man)
    return Path(out)
