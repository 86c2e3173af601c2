"""The verbs as plain functions (no printing): compress, export, load_model. The CLI is a thin layer over these."""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import artifact as art
from .errors import ConfigError
from .export import onnx as onnx_export
from .export.validate import validate
from .methods import get_method, parse_config
from .methods._quant import get_codes
from .model_io import InputSpec, LoadedModel, example_inputs, load_model, parse_input_shape

Step = Callable[[str], None]
RUNTIMES = ("onnxruntime", "openvino", "tflite")


def _noop(_: str) -> None:
    return None


def resolve_specs(loaded: LoadedModel, input_shape: str | None, dynamic: list[str] | None = None) -> list[InputSpec]:
    """Input specs from --input-shape, else from the model source; a clear error when neither knows."""
    if input_shape:
        specs = parse_input_shape(input_shape, dynamic)
        if loaded.inputs and len(loaded.inputs) == len(specs):
            for s, known in zip(specs, loaded.inputs):
                s.name, s.high = known.name, known.high
        return specs
    if loaded.inputs:
        specs = copy.deepcopy(loaded.inputs)
        for d in dynamic or []:
            if d != "batch":
                raise ConfigError(f"--dynamic '{d}' is not supported; only 'batch' is")
            for s in specs:
                s.dynamic[0] = "batch"
        return specs
    raise ConfigError(f"the input shape of {loaded.source} is unknown; pass --input-shape, e.g. 1x3x224x224")


def resolve_runtime(target: str) -> tuple[str, dict[str, Any]]:
    """A runtime name, or a target profile name/path -> (runtime, profile dict or {})."""
    if target in RUNTIMES:
        return target, {}
    try:
        from .targets import load_target
    except ImportError:
        raise ConfigError(f"unknown target '{target}'; choose one of {', '.join(RUNTIMES)}") from None
    prof = load_target(target)
    return prof.runtime, prof.model_dump()


def _save_program(model: nn.Module, inputs: tuple[torch.Tensor, ...], specs: Sequence[InputSpec], path: Path) -> None:
    """torch.export the (compressed) model so later exports (tflite) work without the source."""
    dyn = onnx_export._dynamic_shapes(specs)
    with onnx_export._quiet():
        prog = torch.export.export(model, inputs, dynamic_shapes=dyn)
        torch.export.save(prog, str(path))


def _output_specs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[dict[str, Any]]:
    with torch.no_grad():
        out = model(*inputs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [{"name": f"output_{i}" if i else "output", "shape": list(o.shape), "dtype": str(o.dtype).replace("torch.", "")}
            for i, o in enumerate(outs)]


def _export_runtime(model: nn.Module, specs: Sequence[InputSpec], root: Path, runtime: str, precision: str,
                    step: Step, fp16: bool = False) -> dict[str, Any]:
    """Write exports/<runtime>/ inside root from model.onnx (or the torch module for tflite) and validate it."""
    t0 = time.perf_counter()
    out_dir = root / "exports" / runtime
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    step(f"export {runtime}")
    if runtime == "onnxruntime":
        path = out_dir / "model.onnx"
        shutil.copy2(root / "model.onnx", path)
    elif runtime == "openvino":
        from .export.openvino import convert

        path = convert(root / "model.onnx", out_dir, fp16=fp16)
        precision = "fp16" if fp16 else precision
    elif runtime == "tflite":
        from .export.tflite import convert as tfl

        path = tfl(model, example_inputs(list(specs)), out_dir)
    else:
        raise ConfigError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
    t_export = time.perf_counter() - t0
    step(f"validate {runtime}")
    val = validate(model, specs, path, runtime, precision)
    return {"file": str(path.relative_to(root)), "precision": precision, "validation": val,
            "seconds": {"export": round(t_export, 3), "validate": round(time.perf_counter() - t0 - t_export, 3)}}


def _source_info(loaded: LoadedModel) -> dict[str, Any]:
    p = Path(loaded.source)
    info: dict[str, Any] = {"path": loaded.source, "kind": loaded.kind}
    if p.is_file():
        info["sha256"] = art.sha256_file(p)
    elif loaded.kind == "demo":
        from .models.digits_cnn import WEIGHTS

        info["sha256"] = art.sha256_file(WEIGHTS)
    return info


def compress(model_src: str | Path, method: str, options: dict[str, Any] | None, out: Path,
             input_shape: str | None = None, data: Any = None, overwrite: bool = False,
             runtimes: Sequence[str] = (), dynamic: list[str] | None = None, arch: str | None = None,
             allow_class: list[str] | None = None, trust_pickle: bool = False, on_step: Step = _noop) -> Path:
    """Load, apply `method`, write an artifact (model.onnx validated on ONNX Runtime, model.pt2, exports)."""
    mod = get_method(method)
    cfg = parse_config(mod, options or {})
    if mod.NEEDS != "none" and data is None:
        raise ConfigError(f"method '{method}' needs {mod.NEEDS} data; pass --data FILE")
    on_step("load")
    loaded = load_model(model_src, arch, allow_class, trust_pickle)
    specs = resolve_specs(loaded, input_shape, dynamic)
    inputs = example_inputs(specs)
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    on_step(f"compress ({method})")
    model, report = mod.apply(loaded.module, cfg, data)
    model.eval()
    steps["compress"] = time.perf_counter() - t0
    from .flops import count_macs, count_params

    with torch.no_grad():
        report.params_after = count_params(model)
        report.macs_after = count_macs(model, inputs)
    precision = report.extra.get("export_precision", "fp32")
    with art.staging(out, overwrite) as root:
        on_step("export onnx")
        t0 = time.perf_counter()
        qdq = onnx_export.to_onnx(model, inputs, specs, root / "model.onnx", get_codes(model))
        _save_program(model, inputs, specs, root / "model.pt2")
        steps["onnx"] = time.perf_counter() - t0
        on_step("validate onnx")
        val = validate(model, specs, root / "model.onnx", "onnxruntime", precision)
        exports = {rt: _export_runtime(model, specs, root, rt, precision, on_step) for rt in runtimes}
        manifest = {"kind": "compress", "source": _source_info(loaded), "model": "model.onnx",
                    "torch_program": "model.pt2", "inputs": [s.to_dict() for s in specs],
                    "outputs": _output_specs(model, inputs),
                    "method": {"name": method, "config": cfg.model_dump(), "report": report.to_dict()},
                    "integer_weights": qdq, "validation": {"onnx": val}, "exports": exports,
                    "steps": {k: round(v, 3) for k, v in steps.items()}}
        art.write_manifest(root, manifest)
    return Path(out)


def export(src: str | Path, target: str, out: Path | None = None, input_shape: str | None = None,
           overwrite: bool = False, dynamic: list[str] | None = None, arch: str | None = None,
           allow_class: list[str] | None = None, trust_pickle: bool = False, fp16: bool = False,
           on_step: Step = _noop) -> Path:
    """Export a model or an artifact to one runtime (or target profile); validated; returns the artifact folder."""
    runtime, profile = resolve_runtime(target)
    src_p = Path(src)
    if str(src).endswith(".onnx") and src_p.is_file():
        from .export.onnx_source import export_onnx_file

        return export_onnx_file(src_p, runtime, out, overwrite, fp16, on_step)
    on_step("load")
    loaded = load_model(src, arch, allow_class, trust_pickle)
    specs = resolve_specs(loaded, input_shape, dynamic)
    if profile.get("static_shapes") and any(s.dynamic for s in specs):
        raise ConfigError(f"target '{target}' needs static shapes; drop --dynamic")
    is_art = loaded.kind == "artifact"
    dest = Path(out) if out else (src_p if is_art else None)
    if dest is None:
        raise ConfigError("pass -o DIR for the artifact folder")
    with art.staging(dest, overwrite=overwrite or (is_art and dest.resolve() == src_p.resolve()),
                     base=src_p if is_art else None) as root:
        if is_art:
            man = art.read_manifest(root)
            precision = man.get("method", {}).get("report", {}).get("extra", {}).get("export_precision", "fp32")
        else:
            inputs = example_inputs(specs)
            on_step("export onnx")
            onnx_export.to_onnx(loaded.module, inputs, specs, root / "model.onnx")
            _save_program(loaded.module, inputs, specs, root / "model.pt2")
            precision = "fp32"
            man = {"kind": "export", "source": _source_info(loaded), "model": "model.onnx",
                   "torch_program": "model.pt2", "inputs": [s.to_dict() for s in specs],
                   "outputs": _output_specs(loaded.module, inputs), "exports": {}}
        man.setdefault("exports", {})[runtime] = _export_runtime(loaded.module, specs, root, runtime, precision,
                                                                 on_step, fp16)
        if profile:
            man["exports"][runtime]["target"] = profile.get("name")
        art.write_manifest(root, man)
    return dest
