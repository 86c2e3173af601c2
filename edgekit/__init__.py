"""edgekit: compress a PyTorch model, export it to ONNX Runtime / OpenVINO / LiteRT with validation, and profile it.

Public API (imported lazily, so `import edgekit` stays cheap)::

    edgekit.load_model(src, arch=None, allow_class=None, trust_pickle=False, arch_args=None)
    edgekit.compress(model_src, method, options, out, ...)      -> artifact Path
    edgekit.compress_chain(model_src, [(method, options), ...], out, ...)
    edgekit.export_model(src, target, out=None, ...)              -> artifact Path (= edgekit.api.export)
    edgekit.run_recipe(path)                                      -> (artifact Path, gate figures)
    edgekit.profile_artifact(art, targets, out_json=None)         -> profile dict
    edgekit.run_bench(model_src, targets, methods, out_dir, ...)  -> bench dict (= edgekit.bench.bench)
    edgekit.evaluate(model_or_artifact, task, runtime=None, ...)  -> metrics dict

`export` and `bench` are also subpackage/module names (edgekit.export, edgekit.bench), and Python rebinds a package
attribute to the submodule once it is imported, so the functions are published as export_model / run_bench.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {"load_model": ("edgekit.model_io", "load_model"), "compress": ("edgekit.api", "compress"),
        "compress_chain": ("edgekit.api", "compress_chain"), "export_model": ("edgekit.api", "export"),
        "run_recipe": ("edgekit.api", "run_recipe"), "profile_artifact": ("edgekit.profile", "profile_artifact"),
        "run_bench": ("edgekit.bench", "bench"), "evaluate": ("edgekit.eval", "evaluate"),
        "report": ("edgekit.profile.report", "report")}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        mod, attr = _API[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
