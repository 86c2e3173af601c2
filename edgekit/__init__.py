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
import os
import sys
from typing import Any

__version__ = "0.1.0"


def _no_telemetry() -> None:
    """Keep OpenVINO's and NNCF's usage telemetry off in edgekit processes (EDGEKIT_ALLOW_TELEMETRY=1 allows it).

    Why: openvino_telemetry sends a usage event to Google Analytics on every `convert_model` / NNCF call unless the
    user ran its opt-out script; an edge toolkit should not phone home on the user's behalf. It also sends from a
    forked multiprocessing child started in a thread; forked after JAX/TF threads exist (LiteRT export), such a
    child can deadlock, and the interpreter then hangs at exit joining it (seen once in a full test run here).
    With the module marked absent (None in sys.modules), OpenVINO and NNCF fall back to their own no-op stubs."""
    if os.environ.get("EDGEKIT_ALLOW_TELEMETRY") == "1":
        return
    mod = sys.modules.get("openvino_telemetry")
    if mod is None:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # `import` now raises ImportError
        return
    try:  # imported before edgekit: silence the sender instead
        from openvino_telemetry.backend import backend_ga4

        backend_ga4.GA4Backend.send = lambda *_a, **_k: None
    except Exception:  # noqa: BLE001 - a changed telemetry package must never break edgekit
        pass


_no_telemetry()

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
