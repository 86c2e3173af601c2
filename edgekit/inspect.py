"""`edgekit inspect`: parameters, MACs, size, I/O and op histogram of .pt/.pt2/.safetensors/.onnx/.xml/.tflite files."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .errors import ConfigError


def inspect_path(path: Path, input_shape: str | None = None, arch: str | None = None,
                 arch_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Facts about a model file or artifact, as a dict (the CLI prints it); `arch_args` go to the `arch` factory."""
    path = Path(path)
    from . import artifact

    if artifact.is_artifact(path):
        man = artifact.read_manifest(path)
        info = inspect_path(path / man.get("model", "model.onnx"))
        info["artifact"] = {"kind": man.get("kind"), "method": man.get("method", {}).get("name"),
                            "exports": sorted(man.get("exports", {}))}
        return info
    if not path.exists() and str(path) != "demo":
        raise ConfigError(f"{path} does not exist")
    suffix = path.suffix
    size = path.stat().st_size if path.is_file() else None
    if suffix == ".onnx":
        return {"format": "onnx", "bytes": size, **_onnx(path)}
    if suffix == ".xml":
        return {"format": "openvino", "bytes": size + (path.with_suffix(".bin").stat().st_size
                                                       if path.with_suffix(".bin").exists() else 0), **_ov(path)}
    if suffix == ".tflite":
        return {"format": "tflite", "bytes": size, **_tflite(path)}
    return {"format": "torch", "bytes": size, **_torch(path, input_shape, arch, arch_args)}


def _onnx(path: Path) -> dict[str, Any]:
    import numpy as np
    import onnx

    m = onnx.load(str(path))
    params = sum(int(np.prod(i.dims)) for i in m.graph.initializer)
    inits = {i.name for i in m.graph.initializer}
    io = {"inputs": [(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
                     for i in m.graph.input if i.name not in inits],
          "outputs": [(o.name, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim])
                      for o in m.graph.output]}
    out = {"params": params, "ops": dict(Counter(n.op_type for n in m.graph.node).most_common()), **io}
    try:
        from .profile.roofline import onnx_cost

        cost = onnx_cost(path)
        out["macs"] = cost.get("macs")
    except Exception:  # the cost model is optional for inspect
        pass
    return out


def _ov(path: Path) -> dict[str, Any]:
    import openvino as ov

    m = ov.Core().read_model(str(path))
    return {"ops": dict(Counter(op.get_type_name() for op in m.get_ops()).most_common()),
            "inputs": [(p.get_any_name(), str(p.get_partial_shape())) for p in m.inputs],
            "outputs": [(p.get_any_name(), str(p.get_partial_shape())) for p in m.outputs]}


def _tflite(path: Path) -> dict[str, Any]:
    from .runtimes import open_session

    s = open_session(path, "tflite")
    it = s.info["interpreter"]
    ops = Counter(o["op_name"] for o in it._get_ops_details())  # public API has no op list
    return {"ops": dict(ops.most_common()),
            "inputs": [(d["name"], d["shape"].tolist()) for d in it.get_input_details()],
            "outputs": [(d["name"], d["shape"].tolist()) for d in it.get_output_details()]}


def _torch(path: Path, input_shape: str | None, arch: str | None,
           arch_args: dict[str, Any] | None = None) -> dict[str, Any]:
    from torch import nn

    from .flops import count_macs, count_params
    from .model_io import example_inputs, load_model, parse_input_shape

    loaded = load_model(path, arch, arch_args=arch_args)
    specs = parse_input_shape(input_shape) if input_shape else loaded.inputs
    out: dict[str, Any] = {"params": count_params(loaded.module),
                           "modules": dict(Counter(type(m).__name__ for m in loaded.module.modules()
                                                   if not isinstance(m, nn.Sequential)).most_common(12))}
    if specs:
        out["macs"] = count_macs(loaded.module, example_inputs(specs))
        out["inputs"] = [(s.name, s.shape) for s in specs]
    return out
