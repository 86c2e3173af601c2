"""Does the profiler measure what a plain loop measures? Times one artifact per runtime both ways, in one run.

For each runtime: a plain in-process loop with the runtime's own API (same threads), then profile_artifact
(subprocess, target protocol), then the plain loop again; ratio = profiler p50 / mean of the two plain p50s
(expected 0.9-1.1). Also prints the subprocess overhead (interpreter start + imports + JSON).
Writes benchmarks/results/profiler_check.json.  Run: python benchmarks/profiler_check.py
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit import api
from edgekit.artifact import export_file
from edgekit.profile import host_info, profile_artifact
from edgekit.profile.measure import host_threads

TARGETS = {"onnxruntime": "host-epyc-zen3", "openvino": "intel-cpu-openvino", "tflite": "rpi5-litert"}
OUT = Path(__file__).parent / "results" / "profiler_check.json"


def small_cnn() -> nn.Module:
    """~60 MFLOP conv net: long enough (~1 ms) for timer resolution and Python overhead not to matter."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10)).eval()


def plain_runner(path: Path, runtime: str, threads: int, x: np.ndarray):
    """The runtime's own API, nothing from edgekit: returns a zero-argument inference call."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = {s.get_inputs()[0].name: x}
        return lambda: s.run(None, feeds)
    if runtime == "openvino":
        import openvino as ov

        c = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                       "INFERENCE_PRECISION_HINT": "f32"})
        r = c.create_infer_request()
        return lambda: r.infer([x])
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    idx = it.get_input_details()[0]["index"]

    def run() -> None:
        it.set_tensor(idx, x)
        it.invoke()
    return run


def plain_p50(run, seconds: float = 2.0, warmup: int = 20) -> float:
    """Median latency (ms) of a bare loop."""
    for _ in range(warmup):
        run()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 50:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def build(tmp: Path) -> Path:
    """Artifact with all three exports, through the public API."""
    x = torch.randn(1, 3, 64, 64)
    prog = torch.export.export(small_cnn(), (x,))
    torch.export.save(prog, tmp / "model.pt2")
    art = api.export(tmp / "model.pt2", "onnxruntime", out=tmp / "art", input_shape="1x3x64x64")
    for rt in ("openvino", "tflite"):
        try:
            api.export(art, rt)
        except Exception as e:  # noqa: BLE001 - report and go on with the other runtimes
            print(f"{rt} export failed: {e}", file=sys.stderr)
    return art


def main() -> None:
    """Run the check and write the JSON."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        art = build(Path(d))
        x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
        for rt, tgt in TARGETS.items():
            try:
                path = export_file(art, rt)
            except Exception as e:  # noqa: BLE001
                rows.append({"runtime": rt, "target": tgt, "error": str(e)})
                continue
            from edgekit.targets import load_target

            threads = min(load_target(tgt).threads, host_threads())
            run = plain_runner(path, rt, threads, x)
            before = plain_p50(run)
            t0 = time.perf_counter()
            res = profile_artifact(art, [tgt])["results"][0]
            wall = time.perf_counter() - t0
            after = plain_p50(run)
            plain = (before + after) / 2
            prof = res["timing_ms"]["warm"]["p50"] if res["status"] == "ok" else None
            row = {"runtime": rt, "target": tgt, "threads": threads, "plain_p50_ms_before": before,
                   "plain_p50_ms_after": after, "profiler_p50_ms": prof,
                   "ratio": prof / plain if prof else None, "profiler_stable": res.get("stable"),
                   "robust_cv": res["timing_ms"]["warm"]["robust_cv"] if prof else None,
                   "subprocess_overhead_s": (res.get("subprocess") or {}).get("overhead_s"),
                   "profile_artifact_wall_s": wall, "error": res.get("error")}
            rows.append(row)
            print(f"{rt:12s} plain {plain:7.3f} ms  profiler {prof or float('nan'):7.3f} ms  "
                  f"ratio {row['ratio'] or float('nan'):.3f}  subprocess overhead "
                  f"{row['subprocess_overhead_s'] or float('nan'):.2f} s  (whole profile call {wall:.1f} s)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"host": host_info(), "rows": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
