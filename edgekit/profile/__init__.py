"""Profile an artifact on one or more targets: `profile_artifact(art, targets, out_json=None) -> dict`.

Imports stay lazy here so that the measuring subprocess (`edgekit.profile._worker`) starts fast.

JSON schema ("edgekit.profile/1"), the same for every runtime::

    {"schema": "edgekit.profile/1", "kind": "profile", "created": ISO time, "artifact": path,
     "host": {"cpu", "cores", "platform", "python"},
     "cost": graph_cost of the canonical ONNX (estimate: macs, flops, weight/io/activation bytes) or null,
     "results": [{
        "target", "runtime", "file", "file_bytes", "status": "ok" | "error", "error": null | one line,
        "device": {"requested", "used", "fallback_used", "execution_devices"},
        "threads": {"requested", "used", "capped_to_host"},
        "protocol": {warmup, min_runs, min_seconds, max_cv, max_repeats, profile_runs},
        "timing_ms": {"load" (load + compile), "first_inference",
                      "warm": {min, p50, p90, p99, mean, std, cv, robust_cv, runs, seconds, quantiles_ms[101]}},
        "stable": bool (noise gate), "attempts": [{p50, cv, robust_cv, runs}],
        "throughput_per_s": batch / mean latency,
        "memory_mb": {"method", "baseline", "load_peak", "inference_peak", "model_peak" (max peak - baseline)},
        "memory_budget": {"budget_mb", "measured_mb" (= model_peak), "exceeds"},
        "ops": {"source", "runs", "total_ms", "by_type": {op: {time_ms, count, share}}, "top": [...],
                "fallback_ops": [...], "note"?},
        "estimate": {"label": "estimate", macs, flops, bytes, "target": {roofline_ms, compute_ms, memory_ms,
                     bound, peak_gflops, peak_precision}, host_profile, host_roofline_ms, host_efficiency,
                     calibrated_ms},
        "versions": {runtime: version, ...},
        "subprocess": {"wall_s", "worker_s", "overhead_s"}}]}

Every latency is milliseconds per inference at the artifact's input shape; "estimate" blocks are never measurements.
"""
from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

SCHEMA = "edgekit.profile/1"
_RUNTIME_PKG = {"onnxruntime": ("onnxruntime", "onnxruntime", "all"), "openvino": ("openvino", "openvino", "all"),
                "tflite": ("ai_edge_litert", "ai-edge-litert", "tflite")}


def require_runtime(runtime: str) -> None:
    """Raise MissingDependencyError naming the extra when a runtime is not importable."""
    from ..errors import MissingDependencyError

    module, package, extra = _RUNTIME_PKG[runtime]
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(package, extra)


def host_info() -> dict[str, Any]:
    """What machine produced the numbers."""
    from .measure import host_threads

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": host_threads(), "isa": _isa_flags(), "platform": platform.platform(),
            "python": sys.version.split()[0]}


def _isa_flags() -> list[str]:
    """SIMD features that change kernel choice (so a report shows what the host really had)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith(("flags", "Features"))), [])
    keep = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")
    return [f for f in keep if f in flags]


def artifact_file(art: Path, manifest: dict[str, Any], runtime: str) -> Path:
    """The file a runtime executes: its export, or for ONNX Runtime the canonical model.onnx when not exported."""
    from ..artifact import export_file

    if runtime == "onnxruntime" and runtime not in manifest.get("exports", {}):
        return export_file(art, "onnx")
    return export_file(art, runtime)


def profile_one(art: Path, manifest: dict[str, Any], target: Any, cost: dict[str, Any] | None,
                host: Any) -> dict[str, Any]:
    """Measure one target and attach file size, budget check and labelled estimates."""
    from .measure import measure_file
    from .roofline import estimate

    f = artifact_file(art, manifest, target.runtime)
    res = measure_file(f, target.runtime, device=target.device, fallback=target.fallback, threads=target.threads,
                       protocol=target.protocol, input_hint=manifest.get("inputs"), static_shapes=target.static_shapes)
    size = f.stat().st_size + sum(p.stat().st_size for p in f.parent.glob(f.stem + ".bin")) if f.is_file() else 0
    base = {"target": target.name, "runtime": target.runtime, "file": str(f.relative_to(art)), "file_bytes": size}
    res = {**base, **res}
    if res["status"] != "ok":
        return res
    peak = res["memory_mb"]["model_peak"]
    res["memory_budget"] = {"budget_mb": target.memory_budget_mb, "measured_mb": peak,
                            "exceeds": peak > target.memory_budget_mb}
    if cost is not None:
        res["estimate"] = estimate(cost, target, host, res["timing_ms"]["warm"]["p50"], res["threads"]["used"])
    return res


def profile_artifact(art: str | Path, targets: Sequence[Any], out_json: str | Path | None = None) -> dict[str, Any]:
    """Profile `art` on each target (name, YAML path or TargetProfile), each in its own subprocess."""
    from ..artifact import now_iso, read_manifest
    from ..errors import ConfigError
    from ..targets import host_target, load_target
    from .roofline import graph_cost

    if not targets:
        raise ConfigError("no target given; pass --target NAME (see `edgekit targets list`)")
    tgts = [load_target(t) for t in targets]  # bad target names fail before anything touches the artifact
    art = Path(art)
    manifest = read_manifest(art)
    for t in tgts:  # fail before measuring anything
        require_runtime(t.runtime)
        artifact_file(art, manifest, t.runtime)
    onnx_path = art / manifest.get("model", "model.onnx")
    shapes = {i["name"]: i["shape"] for i in manifest.get("inputs", [])}
    cost = graph_cost(onnx_path, shapes) if onnx_path.is_file() else None
    host = host_target()
    doc = {"schema": SCHEMA, "kind": "profile", "created": now_iso(), "artifact": str(art), "host": host_info(),
           "cost": cost, "results": [profile_one(art, manifest, t, cost, host) for t in tgts]}
    if out_json is not None:
        out = Path(out_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(out)
    return doc


__all__ = ["SCHEMA", "profile_artifact", "require_runtime"]
