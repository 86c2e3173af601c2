"""Measuring worker: `python -m edgekit.profile._worker SPEC.json OUT.json` (spawned by measure.measure_file, and
by interleave.interleaved for specs of kind "interleaved").

Phases, each with its own peak RSS: baseline (interpreter + numpy) -> load/compile -> first inference + timed
runs -> per-op profiling (separate session, not timed, memory not reported). Failures become
{"status": "error", "error": "..."} so one bad target never hides the others.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_T_START = time.perf_counter()


def _versions(runtime: str) -> dict[str, str]:
    """Version of the runtime that produced the numbers (plus numpy)."""
    from importlib import metadata

    pkg = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tflite": "ai-edge-litert"}[runtime]
    out = {}
    for p in (pkg, "numpy", "edgekit"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one file under the spec's protocol; returns the result dict (schema: edgekit.profile docstring)."""
    from ..targets import MeasureProtocol
    from .measure import PeakRSS, time_protocol
    from .ops import op_profile
    from ..runtimes import open_session, random_feeds, session_inputs

    protocol = MeasureProtocol(**spec["protocol"])
    path, runtime, threads = Path(spec["path"]), spec["runtime"], spec["threads"]
    mem = PeakRSS()
    baseline = mem.current_mb()
    mem.reset()
    t0 = time.perf_counter()
    sess = open_session(path, runtime, threads=threads, device=spec["device"], fallback=spec["fallback"],
                        ov_dynamic_quant=bool(spec.get("ov_dynamic_quant")))
    load_ms = (time.perf_counter() - t0) * 1e3
    load_peak = mem.peak_mb()
    specs = session_inputs(sess)
    dynamic = [s["name"] for s in specs if any(d is None for d in s["shape"])]
    if spec["static_shapes"] and dynamic:
        raise ValueError(f"the target needs static shapes but inputs {dynamic} are dynamic; re-export with "
                         "--input-shape")
    feeds = random_feeds(specs, spec["input_hint"])
    mem.reset()
    t0 = time.perf_counter()
    sess.run(feeds)
    first_ms = (time.perf_counter() - t0) * 1e3
    timing = time_protocol(lambda: sess.run(feeds), protocol)
    infer_peak = mem.peak_mb()
    mem.close()
    device_used = sess.device
    fallback_used = bool(sess.info.get("fallback_used", False))
    exec_devices = (list(sess.info["compiled"].get_property("EXECUTION_DEVICES"))
                    if runtime == "openvino" else [device_used])
    sess = None  # release the session before the op profile opens its own
    ops = op_profile(path, runtime, threads, spec["device"], spec["fallback"], feeds, protocol.profile_runs,
                     bool(spec.get("ov_dynamic_quant")))
    batch = next((s["shape"][0] for s in specs if s["shape"] and s["shape"][0]), 1)
    warm = timing["warm"]
    return {
        "status": "ok", "error": None, "runtime": runtime,
        "device": {"requested": spec["device"], "used": device_used, "fallback_used": fallback_used,
                   "execution_devices": exec_devices},
        "threads": {"requested": spec["threads_requested"], "used": threads,
                    "capped_to_host": threads < spec["threads_requested"]},
        "inputs": [{**s, "fed_shape": list(feeds[s["name"]].shape)} for s in specs],
        "protocol": protocol.model_dump(),
        "timing_ms": {"load": load_ms, "first_inference": first_ms, "warm": warm},
        "stable": timing["stable"], "attempts": timing["attempts"],
        "throughput_per_s": batch * 1e3 / warm["mean"] if warm["mean"] > 0 else None,
        "memory_mb": {"method": mem.method, "baseline": baseline, "load_peak": load_peak,
                      "inference_peak": infer_peak, "model_peak": max(load_peak, infer_peak) - baseline},
        "ops": ops, "versions": _versions(runtime),
    }


def main(argv: list[str]) -> int:
    """Entry point: read spec, measure, write the JSON result (errors included)."""
    from .measure import die_with_parent

    die_with_parent()
    spec = json.loads(Path(argv[0]).read_text())
    try:
        if spec.get("kind") == "interleaved":  # several files in one loop (edgekit.profile.interleave)
            from .interleave import run_interleaved

            res = run_interleaved(spec)
        else:
            res = run(spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent as data
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        res = {"status": "error", "error": f"{type(e).__name__}: {msg}", "trace": traceback.format_exc()[-2000:]}
    res["worker_s"] = time.perf_counter() - _T_START
    Path(argv[1]).write_text(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
