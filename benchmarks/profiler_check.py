"""Does the profiler measure what a plain loop measures? Times one artifact per runtime both ways, in one run.

For each runtime: a plain loop with the runtime's own API (same threads) in a fresh process that imports only
that runtime, the same loop in this process (which also holds torch), then profile_artifact (subprocess, target
protocol), then both plain loops again. ratio = profiler p50 / fresh-process plain p50 (expected 0.9-1.1);
ratio_in_process shows what a loop sharing its process with torch measures (OpenVINO's threads contend with
torch's: ~20% slower here, the reason the profiler isolates each measurement). Also prints the subprocess overhead,
and the p50 of edgekit.profile.interleaved on the same file alone (ratio_interleaved, expected 0.9-1.1: the A/B
helper's loop measures what a plain loop measures). Each row records provenance (command, commit, CPU/ISA, load).
Writes benchmarks/results/profiler_check.json.  Run: python benchmarks/profiler_check.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _plain_loop import plain_p50, plain_runner  # noqa: E402  (runtime-only module, also run as a fresh process)

from edgekit import api
from edgekit.artifact import export_file
from edgekit.profile import host_info, interleaved, profile_artifact, provenance
from edgekit.profile.measure import host_threads

TARGETS = {"onnxruntime": "host", "openvino": "intel-cpu-openvino", "tflite": "rpi5-litert"}
OUT = Path(__file__).parent / "results" / "profiler_check.json"


def small_cnn() -> nn.Module:
    """~60 MFLOP conv net: long enough (~1 ms) for timer resolution and Python overhead not to matter."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10)).eval()


def fresh_p50(path: Path, runtime: str, threads: int) -> float:
    """The plain loop in a new interpreter that imports only numpy and the runtime."""
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "_plain_loop.py"), str(path), runtime,
                          str(threads)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


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
            fresh_before, before = fresh_p50(path, rt, threads), plain_p50(run)
            t0 = time.perf_counter()
            res = profile_artifact(art, [tgt])["results"][0]
            wall = time.perf_counter() - t0
            fresh_after, after = fresh_p50(path, rt, threads), plain_p50(run)
            il = interleaved([(path, rt, "CPU", threads)], rounds=50, warmup=20, min_seconds=2.0, feeds=[x],
                             with_provenance=False)
            plain, fresh = (before + after) / 2, (fresh_before + fresh_after) / 2
            prof = res["timing_ms"]["warm"]["p50"] if res["status"] == "ok" else None
            il_p50 = il["files"][0]["timing_ms"]["p50"] if il["status"] == "ok" else None
            row = {"runtime": rt, "target": tgt, "threads": threads, "fresh_plain_p50_ms": [fresh_before, fresh_after],
                   "in_process_plain_p50_ms": [before, after], "profiler_p50_ms": prof,
                   "ratio": prof / fresh if prof else None, "ratio_in_process": prof / plain if prof else None,
                   "profiler_stable": res.get("stable"),
                   "robust_cv": res["timing_ms"]["warm"]["robust_cv"] if prof else None,
                   "subprocess_overhead_s": (res.get("subprocess") or {}).get("overhead_s"),
                   "profile_artifact_wall_s": wall, "error": res.get("error"), "interleaved_p50_ms": il_p50,
                   "ratio_interleaved": il_p50 / fresh if il_p50 else None, "host_load": res.get("host_load"),
                   "provenance": provenance(threads=threads)}
            rows.append(row)
            print(f"{rt:12s} plain (fresh process) {fresh:7.3f} ms  (in this process {plain:7.3f} ms)  profiler "
                  f"{prof or float('nan'):7.3f} ms  ratio {row['ratio'] or float('nan'):.3f} "
                  f"(vs in-process {row['ratio_in_process'] or float('nan'):.3f})  subprocess overhead "
                  f"{row['subprocess_overhead_s'] or float('nan'):.2f} s  (whole profile call {wall:.1f} s)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"host": host_info(), "rows": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        raise SystemExit(print(__doc__))
    main()
