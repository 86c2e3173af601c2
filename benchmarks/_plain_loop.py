"""A bare timing loop with a runtime's own API and nothing else (no torch, no edgekit), for profiler_check.

Run as `python benchmarks/_plain_loop.py MODEL RUNTIME THREADS` it prints the p50 in ms from a fresh process.

Deliberately not edgekit.profile.interleaved (which replaced the other benchmarks' hand-written loops): this loop is
the independent reference that profiler_check compares edgekit's profiler and interleaved helper against; built
on edgekit, the check would compare edgekit with itself and could not fail.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


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


if __name__ == "__main__":
    path, runtime, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    print(plain_p50(plain_runner(path, runtime, threads, x)))
