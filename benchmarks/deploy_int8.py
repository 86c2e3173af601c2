"""INT8 deploy benchmark (issue 14, first slice): UDFC 8-bit + data-free INT8 on EfficientNet-Lite0, ORT and OpenVINO.

Goes only through the CLI (`edgekit compress ... --deploy int8`, `edgekit eval`), as a user would:
1. compress EfficientNet-Lite0 (with its pooled features as a second output, so the Fashion-MNIST probe reads
   real features) with UDFC ratio=0 bits=8 (its default mid-tread grid, and the paper's grid=midrise), deploy INT8
   for onnxruntime and openvino; the manifest records, per runtime, the INT8 form's validation, its latency next
   to the FP32 file's (interleaved loop, 2 threads, medians) and whether the int8 weights equal UDFC's codes. The
   mid-rise 8-bit grid is expected to be rejected: its codes need 9 bits as int8 (edgekit/deploy/codes.py), and
   the rejection is recorded;
2. score the fashion-probe task through the canonical model.onnx (UDFC weights, float activations) and through
   each INT8 export that was written, next to the cached FP32 reference.
Prints FP32 vs INT8 latency ratios and probe accuracies; writes benchmarks/results/deploy_int8.json with the exact
commands, the git commit, the CPU model and ISA flags (AVX-512 VNNI from /proc/cpuinfo), threads and load average.
Heavy (about 10 minutes on 2 cores): run it alone.

`--part litert` (LiteRT, edgekit/deploy/litert.py): the same UDFC 8-bit model, `--deploy int8 --target tflite`
(full-integer static INT8 from ai-edge-quantizer, data-free ranges from BatchNorm statistics), its time vs the FP32
.tflite (litert-torch) in one interleaved loop on LiteRT (OMP_NUM_THREADS as the caller set it, 2 threads), the
fashion probe through the written .tflite, and the load average before and after (a shared box); merged into the
same JSON under "litert" (the ORT/OpenVINO part is kept as it was).

`--part resnet20` (the issue's third goal row): the Fashion ResNet-20 (benchmarks/weights, FP32 0.9255) through
`edgekit compress --method udfc --set ratio=0.3 --set bits=8 --deploy auto --target onnxruntime --target openvino
--target tflite --input-range LO,HI` (LO/HI: the normalised pixel range, so the data-free LiteRT file is full
integer) and once with ratio=0 (no pruning); per runtime the form `auto` kept and its own interleaved ratio to FP32,
and the top-1 accuracy of the file the artifact ships for that runtime on the 10k Fashion-MNIST test images
(`edgekit eval ART --task npz --data r20_test.npz --runtime RT --arch ...`), next to FP32's. Merged under "resnet20".

    python benchmarks/deploy_int8.py [--part ort-ov|litert|resnet20] [--limit N] [--skip-eval] [--work DIR]
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


def sh(cmd: list[str], log: list[dict], check: bool = True) -> subprocess.CompletedProcess:
    """Run a CLI command, record it with its wall time, exit code and last stderr line."""
    t0 = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(res.stderr)
    err = (res.stderr.strip().splitlines() or [""])[-1]
    log.append({"command": " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1), "exit_code": res.returncode,
                **({"error": err} if res.returncode else {})})
    if check and res.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}: {err}")
    return res


def rows_of(man: dict) -> dict:
    """Per runtime: the form kept, latencies, validation figures, weight-code check, calibration."""
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
    return rows


def evals_of(ek: list[str], art: Path, args: argparse.Namespace, log: list[dict]) -> dict:
    """fashion-probe through model.onnx (weights only, float activations) and each runtime's INT8 export."""
    evals = {}
    for rt in ("onnx",) + RUNTIMES:
        out = args.work / f"eval-{art.name}-{rt}.json"
        res = sh(ek + ["eval", str(art), "--task", "fashion-probe", "--runtime", rt, "--json", str(out)]
                 + (["--limit", str(args.limit)] if args.limit else []), log, check=False)
        if res.returncode:
            evals[rt] = {"error": log[-1]["error"]}
            continue
        res = json.loads(out.read_text())
        evals[rt] = {"metrics": res["metrics"], "reference": res.get("reference"), "samples": res["samples"]}
    return evals


def litert_part(ek: list[str], args: argparse.Namespace) -> None:
    """UDFC 8-bit + `--deploy int8 --target tflite`: form, validation, time vs FP32 .tflite, fashion probe."""
    log: list[dict] = []
    info = {"host_before": host(), "git": git_commit(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    args.work.mkdir(parents=True, exist_ok=True)
    art = args.work / "udfc8-litert"
    res = sh(ek + ["compress", MODEL, "--method", "udfc", "--set", "ratio=0", "--set", "bits=8", "--deploy", "int8",
                   "--target", "tflite", "-o", str(art), "--overwrite"], log, check=False)
    info["host_after_compress"] = host()
    row: dict = {}
    if res.returncode:
        row = {"status": "rejected", "error": log[-1]["error"]}
    else:
        e = json.loads((art / "manifest.json").read_text())["exports"]["tflite"]
        d = e["deploy"]
        f = d["forms"][d["form"]] if d["form"] in d.get("forms", {}) else {}
        row = {"status": "written", "form": d["form"], "why": d["why"], "precision": e["precision"],
               "median_ms": d["speed"]["median_ms"], "int8_vs_fp32": d["speed"]["ratio_to_fp32"].get(d["form"]),
               "ratio_ci95": d["speed"].get("ratio_ci95"), "speed_load": d["speed"].get("load"),
               "speed_protocol": {k: d["speed"].get(k) for k in ("runs", "warmup", "threads", "protocol")},
               "validation": {"inputs": e["validation"].get("inputs"), "outputs": e["validation"]["outputs"],
                              "floors": e["validation"]["tolerance"], "passed": e["validation"]["passed"]},
               "calibration": f.get("calibration"), "weight_codes": f.get("weight_codes"), "ops": f.get("ops"),
               "tensor_types": f.get("tensor_types"), "warning": d.get("warning")}
        if not args.skip_eval:
            out = args.work / "eval-udfc8-litert-tflite.json"
            ev = sh(ek + ["eval", str(art), "--task", "fashion-probe", "--runtime", "tflite", "--json", str(out)]
                    + (["--limit", str(args.limit)] if args.limit else []), log, check=False)
            if ev.returncode:
                row["fashion_probe"] = {"error": log[-1]["error"]}
            else:
                r = json.loads(out.read_text())
                row["fashion_probe"] = {"metrics": r["metrics"], "reference": r.get("reference"),
                                        "samples": r["samples"]}
        shutil.rmtree(art, ignore_errors=True)
    info.update(model=MODEL, deploy="LiteRT full-integer INT8 (ai-edge-quantizer static_wi8_ai8), data-free ranges "
                "from BatchNorm statistics (k=6)", commands=log, tflite=row, host_after=host(),
                date=time.strftime("%Y-%m-%d %H:%M"),
                note="shared 2-core box: other jobs ran during the timing; the load averages are recorded")
    prev = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    prev["litert"] = info
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(prev, indent=2, default=str))
    print(f"\nload {info['host_before']['loadavg']} -> {info['host_after']['loadavg']}")
    if row.get("status") == "written":
        m = row["median_ms"]
        probe = (row.get("fashion_probe") or {}).get("metrics", {}).get("probe_accuracy")
        ref = ((row.get("fashion_probe") or {}).get("reference") or {}).get("probe_accuracy")
        print(f"tflite {row['form']}: FP32 {m['fp32']:.1f} ms  {row['form']} {m[row['form']]:.1f} ms  ratio "
              f"{row['int8_vs_fp32']:.2f}x  probe {probe} (FP32 reference {ref})")
    else:
        print(f"tflite: {row}")
    print(f"wrote {RESULTS} (key 'litert')")


def _accuracy(ek: list[str], art: Path, rt: str, test: Path, log: list[dict]) -> float:
    """Top-1 accuracy of the artifact's `rt` file on the test images: `edgekit eval ART --task npz --data TEST.npz
    --runtime RT --json F` (the file opened with the settings its export was validated with)."""
    out = art.parent / f"{art.name}-{rt}-eval.json"
    sh(ek + ["eval", str(art), "--task", "npz", "--data", str(test), "--runtime", rt, "--arch",
             "benchmarks/train_fashion_resnet.py:build", "--json", str(out)], log)  # --arch: the FP32 reference
    acc = json.loads(out.read_text())["metrics"]["accuracy"]
    out.unlink()
    return acc


def resnet20_part(ek: list[str], args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import benchmarks.train_fashion_resnet as tfr

    import numpy as np

    x, y = tfr.load_fashion("test")
    lo, hi = (0.0 - tfr.MEAN) / tfr.STD, (1.0 - tfr.MEAN) / tfr.STD
    src = "benchmarks/weights/fashion_resnet20.safetensors"
    log: list[dict] = []
    res: dict = {"host_before": host(), "git": git_commit(), "model": src, "test_images": args.limit or len(x)}
    args.work.mkdir(parents=True, exist_ok=True)
    n = len(x) if args.limit is None else min(args.limit, len(x))
    test = args.work / "r20_test.npz"  # the normalised test images and their labels, as `edgekit eval --task npz` reads
    np.savez(test, x=x[:n].numpy(), labels=y[:n].numpy().astype(np.int64))
    res["fp32_accuracy"] = {}
    for rt in ("onnxruntime", "openvino", "tflite"):  # one FP32 artifact per runtime, straight from the source
        fp32 = args.work / f"r20-fp32-{rt}"
        sh(ek + ["export", src, "--arch", "benchmarks/train_fashion_resnet.py:build", "--input-shape", "1x1x28x28",
                 "--target", rt, "-o", str(fp32), "--overwrite"], log)
        res["fp32_accuracy"][rt] = round(_accuracy(ek, fp32, rt, test, log), 4)
    print("fp32", res["fp32_accuracy"], flush=True)
    for ratio in (0.3, 0.0):
        art = args.work / f"r20-udfc{int(ratio * 100)}"
        r = sh(ek + ["compress", src, "--arch", "benchmarks/train_fashion_resnet.py:build", "--input-shape", "1x1x28x28",
                     "--method", "udfc", "--set", f"ratio={ratio}", "--set", "bits=8", "--deploy", "auto",
                     "--input-range", f"{lo:.4f},{hi:.4f}", "--target", "onnxruntime", "--target", "openvino",
                     "--target", "tflite", "-o", str(art), "--overwrite"], log, check=False)
        key = f"udfc{int(ratio * 100)}_int8_auto"
        if r.returncode:
            res[key] = {"status": "failed", "error": log[-1].get("error")}
            continue
        man = json.loads((art / "manifest.json").read_text())
        rows = {}
        for rt, e in man["exports"].items():
            d = e.get("deploy") or {}
            rows[rt] = {"form": d.get("form"), "why": d.get("why"), "precision": e.get("precision"),
                        "ratio_to_fp32": ((d.get("speed") or {}).get("ratio_to_fp32") or {}),
                        "accuracy": round(_accuracy(ek, art, rt, test, log), 4)}
            print(key, rt, rows[rt], flush=True)
        rep = man["method"]["report"]
        res[key] = {"status": "written", "runtimes": rows, "params_ratio": round(rep["params_after"] /
                                                                                  rep["params_before"], 3),
                    "macs_ratio": round(rep["macs_after"] / rep["macs_before"], 3)}
    res.update(commands=log, host_after=host(), date=time.strftime("%Y-%m-%d %H:%M"))
    from edgekit.profile import provenance

    res["provenance"] = provenance(threads=2)
    prev = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    prev["resnet20"] = res
    RESULTS.write_text(json.dumps(prev, indent=1, default=str))
    print(f"wrote {RESULTS} (key 'resnet20')")


def bench_part(ek: list[str], args: argparse.Namespace) -> None:
    """`edgekit bench` reproducing the ResNet-20 row (UDFC 0% W8, `--deploy auto`) on the three runtimes' targets,
    calibrated with --data (256 normalised Fashion train images; bench has no --input-range); key bench_resnet20."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import benchmarks.train_fashion_resnet as tfr

    args.work.mkdir(parents=True, exist_ok=True)
    calib = args.work / "r20_calib.npy"
    np.save(calib, tfr.load_fashion("train")[0][:256].numpy())
    out = args.work / "bench-r20"
    log: list[dict] = []
    cmd = ek + ["bench", "benchmarks/weights/fashion_resnet20.safetensors", "--arch",
                "benchmarks/train_fashion_resnet.py:build", "--input-shape", "1x1x28x28", "--targets",
                "host,intel-cpu-openvino,rpi5-litert", "--methods", "udfc", "--set", "udfc.ratio=0", "--set",
                "udfc.bits=8", "--deploy", "auto", "--data", str(calib), "-o", str(out)]
    sh(cmd, log)
    doc = json.loads((out / "bench.json").read_text())
    rows = [{k: r.get(k) for k in ("variant", "target", "runtime", "status", "p50_ms", "speedup", "size_mb")}
            | {"form": (r.get("deploy") or {}).get("form"), "fidelity": (r.get("fidelity") or {}).get("value"),
               "fidelity_metric": (r.get("fidelity") or {}).get("metric"),
               "slower": (r.get("slower") or {}).get("summary")} for r in doc["rows"]]
    for r in rows:
        print(r, flush=True)
    from edgekit.profile import provenance

    prev = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    prev["bench_resnet20"] = {"rows": rows, "commands": log, "bench_json": str(out / "bench.json"),
                              "note": "bench times variants back to back per target (not interleaved); speedup = "
                                      "fp32 p50 / variant p50", "provenance": provenance(threads=2)}
    RESULTS.write_text(json.dumps(prev, indent=1, default=str))
    print(f"wrote {RESULTS} (key 'bench_resnet20')")


def effnet_ops_part(ek: list[str], args: argparse.Namespace) -> None:
    """Where EfficientNet-Lite0's time goes on ONNX Runtime, FP32 vs the data-free INT8 file: `edgekit export` and
    `edgekit compress --deploy int8`, then `edgekit profile ART --target host` of each (per-op summary from ORT's
    profiler; depthwise convs have their own row). Written under 'effnet_ort_ops'."""
    log: list[dict] = []
    args.work.mkdir(parents=True, exist_ok=True)
    fp32, q = args.work / "effnet-ops-fp32", args.work / "effnet-ops-int8"
    sh(ek + ["export", MODEL, "--target", "onnxruntime", "-o", str(fp32), "--overwrite"], log)
    sh(ek + ["compress", MODEL, "--method", "udfc", "--set", "ratio=0", "--set", "bits=8", "--deploy", "int8",
             "--target", "onnxruntime", "-o", str(q), "--overwrite"], log)
    ops = {}
    for name, art in (("fp32", fp32), ("int8", q)):
        out = args.work / f"effnet-ops-prof-{name}"
        sh(ek + ["profile", str(art), "--target", "host", "-o", str(out)], log)
        doc = json.loads((out / "profile.json").read_text())
        res = doc["results"][0]
        ops[name] = {"p50_ms": res["timing_ms"]["warm"]["p50"], "ops": res["ops"]["by_type"], "runs": res["ops"]["runs"]}
    groups = {}
    for name, o in ops.items():
        g = {"depthwise": 0.0, "other conv": 0.0, "rest": 0.0}
        for k, v in o["ops"].items():
            key = "depthwise" if k.endswith("(depthwise)") else "other conv" if "Conv" in k else "rest"
            g[key] += v["time_ms"]
        groups[name] = {k: round(v, 3) for k, v in g.items()}
    ratio = {k: round(groups["int8"][k] / groups["fp32"][k], 3) for k in groups["fp32"] if groups["fp32"][k]}
    prev = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    prev["effnet_ort_ops"] = {"commands": log, "per_run_ms_by_group": groups, "int8_over_fp32_by_group": ratio,
                              "ops": ops, "host": host(), "git": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
                              "note": "ONNX Runtime profiler times per op type (profiling on), summed per run; "
                                      "'other conv' = the stem conv, pointwise and the rest of the convs"}
    RESULTS.write_text(json.dumps(prev, indent=1, default=str))
    print(json.dumps({"per_run_ms_by_group": groups, "int8_over_fp32_by_group": ratio}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("ort-ov", "litert", "resnet20", "bench", "effnet-ops"), default="ort-ov",
                    help="ort-ov: ONNX Runtime and OpenVINO (first slice); litert: LiteRT full-integer INT8")
    ap.add_argument("--limit", type=int, default=None, help="fashion-probe test images (default: the task's 1,000)")
    ap.add_argument("--skip-eval", action="store_true", help="latency and validation only")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit-bench-deploy"), help="artifact folder parent")
    args = ap.parse_args()
    ek, log = edgekit_cmd(), []
    if args.part == "litert":
        return litert_part(ek, args)
    if args.part == "resnet20":
        return resnet20_part(ek, args)
    if args.part == "bench":
        return bench_part(ek, args)
    if args.part == "effnet-ops":
        return effnet_ops_part(ek, args)
    info = {"host_before": host(), "git": git_commit()}
    args.work.mkdir(parents=True, exist_ok=True)
    variants = {}
    for name, grid in (("udfc8", "midtread"), ("udfc8-midrise", "midrise")):
        art = args.work / name
        res = sh(ek + ["compress", MODEL, "--method", "udfc", "--set", "ratio=0", "--set", "bits=8", "--set",
                       f"grid={grid}", "--deploy", "int8", "--target", "onnxruntime", "--target", "openvino",
                       "-o", str(art), "--overwrite"], log, check=False)
        if res.returncode:
            variants[name] = {"status": "rejected", "error": log[-1]["error"]}
            continue
        variants[name] = {"status": "written", "runtimes": rows_of(json.loads((art / "manifest.json").read_text()))}
        if not args.skip_eval:
            variants[name]["fashion_probe"] = evals_of(ek, art, args, log)
        shutil.rmtree(art, ignore_errors=True)
    info.update(model=MODEL, deploy="data-free INT8 (BatchNorm ranges, k=6)", commands=log, variants=variants,
                host_after=host(), date=time.strftime("%Y-%m-%d %H:%M"))
    prev = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for key in ("litert", "resnet20", "bench_resnet20", "effnet_ort_ops"):  # the other parts' sections are kept
        if key in prev:
            info[key] = prev[key]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(info, indent=2, default=str))
    print(f"\nhost: {info['host_before']['cpu']}, AVX-512 VNNI: {info['host_before']['avx512_vnni']}, "
          f"load {info['host_before']['loadavg']} -> {info['host_after']['loadavg']}")
    for name, v in variants.items():
        if v["status"] != "written":
            print(f"{name}: rejected: {v['error']}")
            continue
        probes = v.get("fashion_probe", {})
        for rt, r in v["runtimes"].items():
            m = r["median_ms"]
            probe = (probes.get(rt) or {}).get("metrics", {}).get("probe_accuracy")
            print(f"{name} {rt:12s} FP32 {m['fp32']:.1f} ms  INT8 {m['int8']:.1f} ms  ratio {r['int8_vs_fp32']:.2f}x  "
                  f"mean cosine {min(o['mean_cosine'] for o in r['validation']['outputs'].values()):.4f}"
                  + (f"  probe {probe:.3f}" if probe is not None else ""))
        if "metrics" in probes.get("onnx", {}):
            ref = probes["onnx"].get("reference") or {}
            print(f"{name} probe: FP32 {ref.get('probe_accuracy')}, weights only (float activations) "
                  f"{probes['onnx']['metrics'].get('probe_accuracy')}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
