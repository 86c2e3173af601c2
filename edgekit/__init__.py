"""edgekit: compress a PyTorch model, export it to ONNX Runtime / OpenVINO / LiteRT with validation, and profile it.

Public API (imported lazily, so `import edgekit` stays cheap)::

    edgekit.load_model(src, arch=None, allow_class=None, trust_pickle=False)
    edgekit.compress(model_src, method, options, out, ...)      -> artifact Path
    edgekit.compress_chain(model_src, [(method, options), ...], out, ...)
    edgekit.export(src, target, out=None, ...)                    -> artifact Path
    edgekit.run_recipe(path)                                      -> (artifact Path, gate figures)
    edgekit.profile_artifact(art, targets, out_json=None)         -> profile dict
    edgekit.bench(model_src, targets, methods, out_dir, ...)      -> bench dict
    edgekit.evaluate(model_or_artifact, task, runtime=None, ...)  -> metrics dict
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {"load_model": "edgekit.model_io", "compress": "edgekit.api", "compress_chain": "edgekit.api",
        "export": "edgekit.api", "run_recipe": "edgekit.api", "profile_artifact": "edgekit.profile",
        "bench": "edgekit.bench", "evaluate": "edgekit.eval", "report": "edgekit.profile.report"}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
