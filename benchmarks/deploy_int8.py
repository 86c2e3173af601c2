"""INT8 deploy benchmark (issue 14, first slice): UDFC 8-bit + data-free INT8 on EfficientNet-Lite0, ORT and OpenVINO.

Goes only through the CLI (`edgekit compress ... --deploy int8`, `edgekit eval`), as a user would:
1. compress EfficientNet-Lite0 (with its pooled features as a second output, so the Fashion-MNIST probe reads
   real features) with UDFC ratio=0 bits=8, deploy INT8 for onnxruntime and openvino; the manifest records, per
   runtime, the INT8 form's validation, its latency next to the FP32 file's (interleaved loop, 2 threads, medians)
   and whether the int8 weights equal UDFC's codes;
2. score the fashion-probe task through the canonical model.onnx (UDFC weights, float activations) and through
   each INT8 export, next to the cached FP32 reference.
Prints FP32 vs INT8 latency ratios and probe accuracies; writes benchmarks/results/deploy_int8.json with the exact
commands, the git commit, the CPU model and ISA flags (AVX-512 VNNI from /proc/cpuinfo), threads and load average.
Heavy (about 10 minutes on 2 cores): run it alone.

    python benchmarks/deploy_int8.py [--limit N] [--skip-eval] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "deploy_int8.json"
MODEL = "efficientnet-lite0-features"
RUNTIMES = ("onnxruntime", "openvino")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")


def edgekit_cmd() -> list[str]:
    """The installed `edgekit` console script next to this interpreter (else python -m edgekit.cli)."""
    exe = Path(sys.executable).with_name("edgekit")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "edgekit.cli"]


def host() -> dict:
    """CPU model, ISA flags that matter for int8, cores, load average."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "isa": {f: f in flags for f in FLAGS}, "avx512_vnni": "avx512_vnni" in flags,
            "cpus": os.cpu_count(), "loadavg": os.getloadavg()}


def git_commit() -> dict:
    def run(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


def sh(cmd: list[str], log: list[dict]) -> float:
    """Run a CLI command (fail loudly), record it with its wall time."""
    t0 = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    dt = time.perf_counter() - t0
    log.append({"command": " ".join(cmd), "seconds": round(dt, 1)})
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="fashion-probe test images (default: the task's 1,000)")
    ap.add_argument("--skip-eval", action="store_true", help="latency and validation only")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit-bench-deploy"), help="artifact folder parent")
    args = ap.parse_args()
    ek, log = edgekit_cmd(), []
    info = {"host_before": host(), "git": git_commit()}
    art = args.work / "udfc8-int8"
    args.work.mkdir(parents=True, exist_ok=True)
    sh(ek + ["compress", MODEL, "--method", "udfc", "--set", "ratio=0", "--set", "bits=8", "--deploy", "int8",
             "--target", "onnxruntime", "--target", "openvino", "-o", str(art), "--overwrite"], log)
    man = json.loads((art / "manifest.json").read_text())
    rows = {}
    for rt in RUNTIMES:
        e = man["exports"][rt]
        d = e["deploy"]
        rows[rt] = {"form": d["form"], "why": d["why"], "precision": e["precision"],
                    "median_ms": d["speed"]["median_ms"], "int8_vs_fp32": d["speed"]["ratio_to_fp32"]["int8"],
                    "speed_protocol": {k: d["speed"][k] for k in ("runs", "warmup", "threads", "protocol")},
                    "validation": {"inputs": e["validation"].get("inputs"), "outputs": e["validation"]["outputs"],
                                   "floors": e["validation"]["tolerance"], "passed": e["validation"]["passed"]},
                    "weight_codes": d["int8"]["weight_codes"], "calibration": d["int8"]["calibration"],
                    "left_in_float": d["int8"]["left_in_float"], "ort_kernels": d["int8"].get("ort_kernels")}
    evals = {}
    if not args.skip_eval:
        for rt in ("onnx",) + RUNTIMES:  # onnx: canonical model.onnx = UDFC weights, float activations
            out = args.work / f"eval-{rt}.json"
            sh(ek + ["eval", str(art), "--task", "fashion-probe", "--runtime", rt, "--json", str(out)]
               + (["--limit", str(args.limit)] if args.limit else []), log)
            res = json.loads(out.read_text())
            evals[rt] = {"metrics": res["metrics"], "reference": res.get("reference"), "samples": res["samples"]}
    info.update(model=MODEL, variant="udfc ratio=0 bits=8 + data-free INT8 (k=6)", commands=log, runtimes=rows,
                fashion_probe=evals, host_after=host(), date=time.strftime("%Y-%m-%d %H:%M"),
                versions=man.get("versions", {}))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(info, indent=2, default=str))
    print(f"\nhost: {info['host_before']['cpu']}, AVX-512 VNNI: {info['host_before']['avx512_vnni']}, "
          f"load {info['host_before']['loadavg']}")
    for rt, r in rows.items():
        m = r["median_ms"]
        probe = evals.get(rt, {}).get("metrics", {}).get("probe_accuracy")
        print(f"{rt:12s} FP32 {m['fp32']:.1f} ms  INT8 {m['int8']:.1f} ms  ratio {r['int8_vs_fp32']:.2f}x  "
              f"cosine {min(o['cosine'] for o in r['validation']['outputs'].values()):.4f}"
              + (f"  probe {probe:.3f}" if probe is not None else ""))
    if "onnx" in evals:
        ref = evals["onnx"].get("reference") or {}
        print(f"probe: FP32 {ref.get('probe_accuracy')}, UDFC W8 float activations "
              f"{evals['onnx']['metrics'].get('probe_accuracy')}")
    print(f"wrote {RESULTS}")
    shutil.rmtree(art, ignore_errors=True)


if __name__ == "__main__":
    main()
