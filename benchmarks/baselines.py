"""Peer baselines on the real models: what a user would pick instead of edgekit, against FP32, in one run.

Per model (EfficientNet-Lite0 / fashion-probe, MiniLM / wordnet10, SmolLM2 / perplexity) and variant (FP32, NNCF
INT8 PTQ, ORT static QDQ per-tensor / per-channel, ORT dynamic, NNCF weight compression INT8 / INT4-g128, edgekit
RTN INT8 / INT4, edgekit global magnitude pruning 30 / 50 %): task fidelity through the exported file in its
runtime (edgekit.eval, the first runtime listed), file size, and p50 latency on every runtime the file runs on,
measured interleaved with the FP32 file (edgekit.profile.interleaved: one worker process, order rotating each
round, 2 threads, medians, ratio with its bootstrap CI).

Subsample (set in _baselines_build.model_specs, recorded in the JSON): fashion-probe and wordnet10 at the task
defaults; perplexity: the task default, 16 windows of 512 Python docs (as ANCHORS) + 8 of GPL-3. Cells are cached in
benchmarks/results/baselines.json (resumable; --force redoes them); scratch artifacts live in $BASELINES_WORK
(default /tmp/edgekit-baselines).

    nice python benchmarks/baselines.py                      # all models, all variants
    nice python benchmarks/baselines.py --models minilm --variants fp32,nncf_wc4 --force
    nice python benchmarks/baselines.py --models efficientnet,minilm --force --retime   # latency only, same files
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _baselines_build as B
import _baselines_peers as P
from _baselines_table import write_markdown

from edgekit.artifact import export_file, read_manifest
from edgekit.eval import evaluate
from edgekit.profile import interleaved as time_interleaved
from edgekit.profile import provenance
from edgekit.runtimes import ov_dynamic_quant

RESULTS = Path(__file__).parent / "results"
THREADS = 2


def build(spec: B.ModelSpec, ctx: B.Context, name: str, root: Path) -> dict[str, Any]:
    """Build one variant's artifact folder; returns its info."""
    if name == "fp32":
        return B.fp32_variant(spec, ctx, root)
    if name in ("rtn8", "rtn4", "mag30", "mag50"):
        return B.edgekit_variant(spec, ctx, name, root)
    if name in ("edgekit_int8", "edgekit_int8_data"):
        return B.edgekit_deploy(spec, ctx, root, with_data=name.endswith("_data"))
    if name == "nncf_ptq":
        return P.nncf_ptq(spec, ctx, root)
    if name in ("nncf_wc8", "nncf_wc4"):
        return P.nncf_wc(spec, ctx, root, int(name[-1]))
    if name in ("ort_static_pt", "ort_static_pc"):
        return P.ort_static(spec, ctx, root, name.endswith("pc"))
    if name == "ort_dynamic":
        return P.ort_dynamic(spec, ctx, root)
    if name in B.LITERT:
        return P.litert(spec, ctx, root, static=name == "litert_static8")
    raise SystemExit(f"unknown variant '{name}'; choose from {', '.join(B.ALL)}")


def interleaved(ref: Path, var: Path, runtime: str, feeds: list, budget_s: float, dq: bool = False) -> dict:
    """p50 of the FP32 file and the variant, timed in one interleaved loop in a worker process (at least 8 rounds,
    more while under budget_s, at most 200), the feeds given by position."""
    res = time_interleaved([{"path": ref, "runtime": runtime, "threads": THREADS, "label": "fp32"},
                            {"path": var, "runtime": runtime, "threads": THREADS, "label": "variant",
                             "ov_dynamic_quant": dq}],
                           rounds=8, warmup=3, min_seconds=budget_s, max_rounds=200, feeds=list(feeds),
                           with_provenance=False)
    if res["status"] != "ok":
        raise RuntimeError(f"interleaved timing on {runtime} failed: {res['error']}")
    a, b = res["files"]
    pa, pb = a["timing_ms"]["p50"], b["timing_ms"]["p50"]
    return {"fp32_p50_ms": round(pa, 2), "p50_ms": round(pb, 2), "latency_vs_fp32": round(pb / pa, 3),
            "speedup": round(pa / pb, 3), "pairs": res["rounds"],
            "latency_vs_fp32_ci95": [round(x, 3) for x in b["ratio"]["ci95"]], "load": res["load"]}


def run_cell(spec: B.ModelSpec, ctx: B.Context, name: str, budget_s: float,
             cached: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build (or reuse) the artifact, score fidelity on its first runtime, time it on every runtime. `cached` (the
    cell of an earlier run, --retime): its fidelity is kept when the artifact is the one it scored, and only the
    latency is measured again."""
    root = ctx.work / name
    t0 = time.perf_counter()
    if not (root / "manifest.json").is_file():
        B.clean(root)
        build(spec, ctx, name, root)
    build_s = time.perf_counter() - t0
    man = read_manifest(root)
    runtimes = list(man["exports"])
    if cached and cached.get("metrics") and cached.get("info") == man["baseline"] and cached.get("runtimes") == runtimes:
        keep = {k: cached[k] for k in ("fidelity_runtime", "metrics", "reference", "samples", "metrics_by_runtime",
                                       "eval_s") if k in cached}
        lat = _latencies(ctx, root, man, runtimes, spec, name, budget_s)
        return {"info": man["baseline"], "runtimes": runtimes, **keep, "fidelity_retimed": (
            "fidelity from the earlier run of this same artifact (--retime); latency measured in this run"),
                "size_mb": {rt: B.file_mb(export_file(root, rt)) for rt in runtimes}, "latency": lat,
                "build_s": round(build_s, 1)}
    fid = evaluate(root, spec.task, runtime=runtimes[0], limit=spec.limit, threads=THREADS, options=spec.options)
    per_rt = {}
    if name.startswith("edgekit_int8"):  # each runtime got its own INT8 (or kept) file: score every one
        for rt in runtimes[1:]:
            per_rt[rt] = evaluate(root, spec.task, runtime=rt, limit=spec.limit, threads=THREADS,
                                  options=spec.options)["metrics"]
    lat = _latencies(ctx, root, man, runtimes, spec, name, budget_s)
    return {"info": man["baseline"], "runtimes": runtimes, "fidelity_runtime": fid["runtime"],
            "metrics": fid["metrics"], "reference": fid["reference"], "samples": fid["samples"],
            **({"metrics_by_runtime": {runtimes[0]: fid["metrics"], **per_rt}} if per_rt else {}),
            "size_mb": {rt: B.file_mb(export_file(root, rt)) for rt in runtimes}, "latency": lat,
            "build_s": round(build_s, 1), "eval_s": fid["seconds"]}


def _latencies(ctx: B.Context, root: Path, man: dict, runtimes: list[str], spec: B.ModelSpec, name: str,
               budget_s: float) -> dict[str, Any]:
    fp32 = ctx.work / "fp32"
    lat = {}
    for rt in runtimes:  # each file opened as its artifact says (OpenVINO's dynamic quantization where validated on)
        dq = rt == "openvino" and ov_dynamic_quant(man["exports"][rt])
        lat[rt] = interleaved(export_file(fp32, rt), export_file(root, rt), rt, spec.latency(), budget_s, dq=dq)
        if name.startswith("nncf_wc") and rt == "openvino":  # OpenVINO's own default for int-weight layers
            lat["openvino+dynquant"] = interleaved(export_file(fp32, rt), export_file(root, rt), rt, spec.latency(),
                                                   budget_s, dq=True)
    return lat


def save(doc: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="efficientnet,minilm,smollm2")
    ap.add_argument("--variants", default=",".join(B.ALL))
    ap.add_argument("--force", action="store_true", help="redo cached cells")
    ap.add_argument("--retime", action="store_true", help="with --force: keep each cell's fidelity where its artifact "
                    "is unchanged and measure the latencies again (a timing-protocol change)")
    ap.add_argument("--budget", type=float, default=8.0, help="seconds of interleaved timing per runtime")
    ap.add_argument("--out", type=Path, default=RESULTS / "baselines.json")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("BASELINES_WORK", "/tmp/edgekit-baselines")))
    args = ap.parse_args()
    specs = B.model_specs()
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc["meta"] = {"host": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": THREADS,
                   "latency": "p50 of interleaved calls (FP32 file and variant in one loop in one worker process, "
                              "edgekit.profile.interleaved)",
                   "updated": time.strftime("%Y-%m-%d %H:%M")}
    wanted = args.variants.split(",")
    for mk in args.models.split(","):
        spec = specs[mk]
        ctx = B.Context(spec, args.work / mk)
        subset = {"task": spec.task, "options": spec.options, "limit": spec.limit,
                  "latency_input": spec.latency_shape, "calibration_samples": B.CALIB_N}
        entry = doc.setdefault("models", {}).setdefault(mk, {})
        if entry.get("subset") != subset:
            entry.clear()
        entry["subset"] = subset
        cells = entry.setdefault("cells", {})
        for v in [v for v in B.ALL if v in wanted and (v in spec.variants or v in spec.skipped)]:
            if v in cells and "error" not in cells[v] and not args.force:
                continue
            if v in spec.skipped:
                cells[v] = {"skipped": spec.skipped[v]}
                save(doc, args.out)
                continue
            print(f"[{mk}] {v} ...", flush=True)
            t0 = time.perf_counter()
            try:
                if v != "fp32" and not (ctx.work / "fp32" / "manifest.json").is_file():
                    build(spec, ctx, "fp32", ctx.work / "fp32")
                cells[v] = run_cell(spec, ctx, v, args.budget, cells.get(v) if args.retime else None)
            except Exception as e:  # noqa: BLE001 - record and go on; a rerun retries cells with an error
                traceback.print_exc()
                cells[v] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            cells[v]["wall_s"] = round(time.perf_counter() - t0, 1)
            cells[v]["provenance"] = provenance(threads=THREADS)  # command, commit, versions, CPU/ISA, load
            print(f"[{mk}] {v}: {json.dumps({k: cells[v].get(k) for k in ('metrics', 'error')})[:300]} "
                  f"({cells[v]['wall_s']} s)", flush=True)
            save(doc, args.out)
    write_markdown(doc, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
