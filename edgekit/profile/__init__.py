"""Profile an artifact on one or more targets: `profile_artifact(art, targets, out_json=None) -> dict`.

Also public here (imported lazily, so that the measuring subprocess `edgekit.profile._worker` starts fast):
`interleaved(files, rounds, warmup)` times several model files in one interleaved loop in one worker, with
ratios to the first and their spread (edgekit.profile.interleave); `compare_artifacts(arts, targets)` does that
per target for artifacts (kind "compare", schema in edgekit.profile.compare); `provenance(argv)` and
`host_load()` record where a figure came from and how loaded the host was (edgekit.profile.runinfo).

JSON schema ("edgekit.profile/1"), the same for every runtime::

    {"schema": "edgekit.profile/1", "kind": "profile", "created": ISO time, "artifact": path,
     "host": {"cpu", "cores", "isa", "platform", "python"}, "provenance": provenance() (command, git commit,
     versions, CPU, ISA flags, cores, threads, load average, timestamp),
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
        "subprocess": {"wall_s", "worker_s", "overhead_s"},
        "host_load": {"loadavg_before", "loadavg_after", "cores", "threads", "seconds", "others_after_est",
                      "high", "warning"}}],
     "hardware_estimates"?: [{"method", "label": "estimate (not measured): ...", "summary", ...}]}
        (a method's estimate for hardware this host lacks, e.g. BiPFT on 1-bit kernels; the reports label it)

Every latency is milliseconds per inference at the artifact's input shape; "estimate" blocks are never measurements.
Every absolute figure carries the host load around its measurement; "high" (> 0.75 x cores of other work) adds a
warning, shown in every report: on a loaded host only ratios from one interleaved run compare.
"""
from __future__ import annotations

import importlib.util
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
    """What machine produced the numbers (CPU model and ISA flags detected from /proc/cpuinfo)."""
    from ..targets.host import parse_cpuinfo, read_cpuinfo
    from .measure import host_threads

    info = parse_cpuinfo(read_cpuinfo())
    cpu = info["model"] if info["model"] != "unknown CPU" else (platform.processor() or platform.machine())
    return {"cpu": cpu, "cores": host_threads(), "isa": info["flags"], "platform": platform.platform(),
            "python": sys.version.split()[0]}


def artifact_file(art: Path, manifest: dict[str, Any], runtime: str) -> Path:
    """The file a runtime executes: its export, or for ONNX Runtime the canonical model.onnx when not exported."""
    from ..artifact import export_file

    if runtime == "onnxruntime" and runtime not in manifest.get("exports", {}):
        return export_file(art, "onnx")
    return export_file(art, runtime)


def profile_one(art: Path, manifest: dict[str, Any], target: Any, cost: dict[str, Any] | None,
                host: Any) -> dict[str, Any]:
    """Measure one target and attach file size, budget check and labelled estimates."""
    import time

    from .measure import host_threads, measure_file
    from .runinfo import host_load, load_during
    from .roofline import estimate

    f = artifact_file(art, manifest, target.runtime)
    before, t0 = host_load(), time.perf_counter()
    from ..runtimes import ov_dynamic_quant

    res = measure_file(f, target.runtime, device=target.device, fallback=target.fallback, threads=target.threads,
                       protocol=target.protocol, input_hint=manifest.get("inputs"), static_shapes=target.static_shapes,
                       ov_dynamic_quant=ov_dynamic_quant(manifest.get("exports", {}).get(target.runtime)))
    res["host_load"] = load_during(before, host_load(), min(target.threads, host_threads()),
                                   time.perf_counter() - t0)
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


def hardware_estimates(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The labelled estimates a method recorded for hardware this host does not have (BiPFT: 1-bit kernels), with
    the method's name; shown by the profile report as estimates, never as measurements."""
    out = []
    for m in manifest.get("methods") or ([manifest["method"]] if manifest.get("method") else []):
        e = ((m.get("report") or {}).get("extra") or {}).get("hardware_estimate")
        if isinstance(e, dict) and e.get("label", "").startswith("estimate"):
            out.append({"method": m.get("name"), **e})
    return out


def profile_artifact(art: str | Path, targets: Sequence[Any], out_json: str | Path | None = None,
                     argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Profile `art` on each target (name, YAML path or TargetProfile), each in its own subprocess; `argv` (default
    sys.argv) is the command recorded in the provenance."""
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
    from .runinfo import provenance

    doc = {"schema": SCHEMA, "kind": "profile", "created": now_iso(), "artifact": str(art), "host": host_info(),
           "provenance": provenance(argv, threads=max(t.threads for t in tgts)),
           "cost": cost, "results": [profile_one(art, manifest, t, cost, host) for t in tgts]}
    hw = hardware_estimates(manifest)
    if hw:
        doc["hardware_estimates"] = hw
    if out_json is not None:
        from ..safety import write_own_json

        write_own_json(Path(out_json), doc)
    return doc


_LAZY = {"interleaved": "interleave", "ratio_spread": "interleave", "compare_artifacts": "compare",
         "provenance": "runinfo", "host_load": "runinfo"}


def __getattr__(name: str) -> Any:
    """Lazy public names (module docstring), so importing edgekit.profile stays cheap."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SCHEMA", "compare_artifacts", "host_info", "host_load", "interleaved", "profile_artifact",
           "provenance", "ratio_spread", "require_runtime"]
