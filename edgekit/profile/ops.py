"""Per-op time of one model in its runtime: ONNX Runtime profiler JSON, OpenVINO performance counters, LiteRT op list.

Runs in the measuring worker *after* the timed runs, on a separate profiling session, so profiler overhead never
enters the latency figures. Times are per inference (total over the profiled runs / runs).
`by_type` holds every op type (bench uses it to explain slow-downs); `top` the largest nodes/types;
`fallback_ops` the op types that ran somewhere other than the requested device.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..runtimes import Session, open_session

TOP_N = 10


def _summary(by_type: dict[str, list[float]], runs: int, source: str, **extra: Any) -> dict[str, Any]:
    """Common shape: per-type ms per inference, share of the total, node-count, top-N by time."""
    total = sum(sum(v) for v in by_type.values()) / max(runs, 1)
    types = {t: {"time_ms": sum(v) / max(runs, 1), "count": len(v) // max(runs, 1) or len(v)}
             for t, v in by_type.items()}
    for v in types.values():
        v["share"] = v["time_ms"] / total if total > 0 else 0.0
    top = sorted(({"op_type": t, **v} for t, v in types.items()), key=lambda r: -r["time_ms"])[:TOP_N]
    return {"source": source, "runs": runs, "total_ms": total, "by_type": types, "top": top,
            "fallback_ops": [], **extra}


def profile_ort(path: Path, threads: int, feeds: dict[str, np.ndarray], runs: int) -> dict[str, Any]:
    """ONNX Runtime built-in profiler: sums '*_kernel_time' node events per op type. For a graph with convs the
    session also writes the graph it runs (after ORT's fusions and layout changes), whose `group` attributes say
    which convs are depthwise: the profiler's events do not list a prepacked int8 weight's shape."""
    import tempfile

    import onnx

    convs = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node} & {"Conv", "QLinearConv"}
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-opt-") as tmp:
        opt = Path(tmp) / "optimized.onnx" if convs else None
        sess = open_session(path, "onnxruntime", threads=threads, profiling=True, optimized_path=opt)
        groups = ({n.name: a.i for n in onnx.load(str(opt)).graph.node for a in n.attribute if a.name == "group"}
                  if opt is not None and opt.is_file() else {})
        for _ in range(runs):
            sess.run(feeds)
        prof = Path(sess.info["session"].end_profiling())
        events = json.loads(prof.read_text())
        prof.unlink(missing_ok=True)
    return ort_events_summary(events, runs, groups)


CONV_WEIGHT = {"Conv": 1, "FusedConv": 1, "NhwcFusedConv": 1, "QLinearConv": 3, "ConvInteger": 1}


def _depthwise(op: str, shapes: Any, group: int | None = None, outputs: Any = None) -> bool:
    """Whether a conv event ran a depthwise conv: its weight is [C, 1, k, k] with C > 1 and its input has C channels
    (NCHW or NHWC). Depthwise convs get their own row in the summary, because their kernels behave differently:
    ONNX Runtime's int8 depthwise conv runs at about its float one's speed (EfficientNet-Lite0), while pointwise
    convs run ~3x faster in int8, so a per-type figure that mixes them hides where the time stays."""
    if op not in CONV_WEIGHT:
        return False
    if group is not None and group > 1:  # from the optimized graph: depthwise when every channel is its own group
        try:
            y = next(iter(outputs[0].values()))
            return group in (y[1], y[-1])
        except (AttributeError, IndexError, StopIteration, TypeError):
            return False
    if not isinstance(shapes, list) or len(shapes) <= CONV_WEIGHT[op]:
        return False
    try:
        x = next(iter(shapes[0].values()))
        w = next(iter(shapes[CONV_WEIGHT[op]].values()))
    except (AttributeError, StopIteration, TypeError):
        return False
    if len(w) != 4 or len(x) != 4 or w[1] != 1 or w[0] <= 1:
        return False
    # float convs run NCHW (or NCHWc, channels padded to the block, as the weight's): channels are x[1]; ORT's
    # int8 convs may run NHWC (its layout transformer): x[1] or x[3]
    return w[0] == x[1] or (op == "QLinearConv" and w[0] == x[3])


def ort_events_summary(events: list[dict[str, Any]], runs: int, groups: dict[str, int] | None = None
                       ) -> dict[str, Any]:
    """ONNX Runtime profiler events -> the per-op-type summary: '*_kernel_time' node events summed per op type,
    the first run skipped when there is more than one (one-off allocations and kernel selection)."""
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    t_min = starts[1] if len(starts) > 1 else float("-inf")
    counted = max(len(starts) - 1, 1) if len(starts) > 1 else runs
    by_type: dict[str, list[float]] = defaultdict(list)
    providers: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if (e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
                and e.get("ts", 0) >= t_min):
            op = e.get("args", {}).get("op_name", "?")
            a = e.get("args", {})
            if _depthwise(op, a.get("input_type_shape"), (groups or {}).get(e["name"][:-len("_kernel_time")]),
                          a.get("output_type_shape")):
                op += " (depthwise)"
            by_type[op].append(e.get("dur", 0) / 1e3)
            providers[op].add(e.get("args", {}).get("provider", "?"))
    out = _summary(by_type, counted, "onnxruntime-profiler")
    out["fallback_ops"] = sorted(op for op, p in providers.items() if p - {"CPUExecutionProvider"})
    return out


def profile_ov(path: Path, threads: int, device: str, fallback: str | None, feeds: dict[str, np.ndarray],
               runs: int, ov_dynamic_quant: bool = False) -> dict[str, Any]:
    """OpenVINO performance counters (PERF_COUNT): real time of executed nodes, per node type."""
    sess: Session = open_session(path, "openvino", threads=threads, device=device, fallback=fallback,
                                 profiling=True, ov_dynamic_quant=ov_dynamic_quant)
    req = sess.info["request"]
    by_type: dict[str, list[float]] = defaultdict(list)
    exec_types: dict[str, set[str]] = defaultdict(set)
    for _ in range(2):  # counters cover the last inference only; skip the first ones (lazy init, reorders)
        sess.run(feeds)
    for _ in range(runs):
        sess.run(feeds)
        for p in req.profiling_info:
            if str(p.status).endswith("EXECUTED") and not str(p.status).endswith("NOT_RUN"):
                by_type[p.node_type].append(p.real_time.total_seconds() * 1e3)
                exec_types[p.node_type].add(p.exec_type)
    out = _summary(by_type, runs, "openvino-perf-counters")
    devices = list(sess.info["compiled"].get_property("EXECUTION_DEVICES"))
    out["execution_devices"] = devices
    if sess.info.get("fallback_used"):  # open_session falls back per model, not per op (no HETERO split)
        out["fallback_ops"] = sorted(by_type)
        out["note"] = f"requested {device} is not present; the whole model ran on {sess.device}"
    out["exec_types"] = {t: sorted(v) for t, v in exec_types.items()}
    return out


def profile_tflite(path: Path, threads: int) -> dict[str, Any]:
    """LiteRT: op types and counts only; its Python API exposes no per-op timing."""
    sess = open_session(path, "tflite", threads=threads)
    interp = sess.info["interpreter"]
    counts: dict[str, int] = defaultdict(int)
    try:
        for op in interp._get_ops_details():  # noqa: SLF001 - the only op listing the Python API offers
            counts[op["op_name"]] += 1
    except (AttributeError, KeyError):
        pass
    return {"source": "none", "runs": 0, "total_ms": None,
            "by_type": {t: {"time_ms": None, "count": c, "share": None} for t, c in counts.items()},
            "top": [], "fallback_ops": [],
            "note": "LiteRT's Python API has no per-op timing; use the LiteRT benchmark_model tool with "
                    "--enable_op_profiling=true on the device"}


def op_profile(path: Path, runtime: str, threads: int, device: str, fallback: str | None,
               feeds: dict[str, np.ndarray], runs: int, ov_dynamic_quant: bool = False) -> dict[str, Any]:
    """Dispatch to the runtime's profiler; the working directory receives ORT's temporary JSON."""
    if runs <= 0:
        return {"source": "off", "runs": 0, "total_ms": None, "by_type": {}, "top": [], "fallback_ops": []}
    if runtime == "onnxruntime":
        return profile_ort(path, threads, feeds, runs)
    if runtime == "openvino":
        return profile_ov(path, threads, device, fallback, feeds, runs, ov_dynamic_quant)
    return profile_tflite(path, threads)


def slower_note(ratio: float, ref_ops: dict[str, Any], ops: dict[str, Any]) -> dict[str, Any]:
    """Explain a slow-down by the op types whose per-inference time grew most (variant minus fp32)."""
    a, b = ref_ops.get("by_type") or {}, ops.get("by_type") or {}
    diff = []
    for op in set(a) | set(b):
        ta, tb = (a.get(op) or {}).get("time_ms"), (b.get(op) or {}).get("time_ms")
        if ta is None and tb is None:
            continue
        ta, tb = ta or 0.0, tb or 0.0
        diff.append({"op_type": op, "fp32_ms": ta, "variant_ms": tb, "delta_ms": tb - ta})
    grew = sorted((d for d in diff if d["delta_ms"] > 0), key=lambda d: -d["delta_ms"])[:3]
    if not diff and (a or b):  # no timing (LiteRT's Python API): the op-count difference is the evidence left
        counts = {op: (b.get(op) or {}).get("count", 0) - (a.get(op) or {}).get("count", 0) for op in set(a) | set(b)}
        added = sorted(((op, n) for op, n in counts.items() if n > 0), key=lambda x: -x[1])[:4]
        why = ("no per-op timing for this runtime; ops added vs fp32: "
               + (", ".join(f"{op} x{n}" for op, n in added) if added else "none"))
        return {"ratio": ratio, "op_diff": [], "op_count_diff": dict(added),
                "summary": f"{ratio:.2f}x the fp32 latency (slower); {why}"}
    why = (", ".join(f"{d['op_type']} +{d['delta_ms']:.3g} ms" for d in grew) if grew
           else "no per-op timing for this runtime" if not diff else "no op type grew; overhead is outside ops")
    return {"ratio": ratio, "op_diff": grew, "summary": f"{ratio:.2f}x the fp32 latency (slower); time grew in: {why}"}


__all__ = ["op_profile", "ort_events_summary", "slower_note"]
