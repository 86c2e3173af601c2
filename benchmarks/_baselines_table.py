"""Markdown table of benchmarks/results/baselines.json, with the ANCHORS.md figures beside ours."""
from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = {
    "fp32": "FP32", "nncf_ptq": "NNCF INT8 PTQ (W8A8, 300 calib.)", "ort_static_pt": "ORT static INT8 QDQ per-tensor",
    "ort_static_pc": "ORT static INT8 QDQ per-channel", "ort_dynamic": "ORT dynamic INT8",
    "nncf_wc8": "NNCF weights INT8_ASYM", "nncf_wc4": "NNCF weights INT4_SYM g128",
    "litert_dyn8": "LiteRT dynamic-range INT8 (ai-edge-quantizer)", "litert_static8": "LiteRT static INT8 (300 calib.)", "rtn8": "edgekit RTN W8 per-channel",
    "rtn4": "edgekit RTN W4 per-channel", "mag30": "edgekit magnitude 30%", "mag50": "edgekit magnitude 50%",
    "edgekit_int8": "edgekit compress --deploy auto (UDFC W8 / RTN W8 + INT8, data-free for CNNs)",
    "edgekit_int8_data": "edgekit compress --deploy auto --data (the peers' calib. samples; + NNCF INT8 on OpenVINO)",
}
METRICS = {
    "fashion-probe": [("probe_accuracy", "probe", 3), ("top1_agreement", "top-1 agree", 3)],
    "wordnet10": [("probe_accuracy", "probe", 3), ("cosine", "cosine", 4), ("retrieval_top1", "retr. top-1", 3)],
    "perplexity": [("perplexity_python_docs", "ppl docs", 2), ("perplexity_gpl3", "ppl GPL-3", 2),
                   ("agreement_python_docs", "next-tok agree", 3)],
    "digits": [("accuracy", "accuracy", 3), ("agreement", "agree", 3)],
}
TITLES = {"efficientnet": "EfficientNet-Lite0 (fashion-probe)", "minilm": "all-MiniLM-L6-v2 (wordnet10)",
          "smollm2": "SmolLM2-135M (perplexity)", "demo": "demo digits CNN"}
# ANCHORS.md (and REAL_MODELS.md where marked) figures: fidelity, latency vs FP32, size
ANCHORS = {
    "efficientnet": {"fp32": "0.865 / 1.000; 18.7 MB", "nncf_ptq": "0.856 / 0.633; 0.80x; 6.3 MB",
                     "ort_static_pt": "0.744 / 0.184; 1.13-1.22x; 4.9-5.2 MB",
                     "ort_static_pc": "0.813 / 0.455; 1.13-1.22x; 4.9-5.2 MB",
                     "rtn8": "0.847 (64 px, REAL_MODELS)", "rtn4": "0.304 (64 px, REAL_MODELS)",
                     "mag30": "0.839 / 0.517; 1.00x", "mag50": "0.357 / 0.001; 1.00x"},
    "minilm": {"fp32": "0.825 / 1; 91 MB", "ort_dynamic": "0.813 / 0.966; 0.72x; 22.7 MB",
               "nncf_ptq": "0.827 / 0.996; 1.25x; 24 MB", "nncf_wc8": "0.825 / 0.9997; 1.0x; 23.8 MB",
               "nncf_wc4": "0.827 / 0.958; 1.0x; 18.9 MB"},
    "smollm2": {"fp32": "14.94 (16 windows); 540 MB", "nncf_wc8": "14.99; 1.19x; 138 MB",
                "nncf_wc4": "19.7 (g64/128, emb. INT8); 1.10x; 87 MB",
                "rtn4": "29.9 (16 windows; tied embedding/lm_head kept FP32 — edgekit RTN W4 with "
                        "skip=[lm_head] gives 29.89 on the same windows, torch, measured)",
                "mag50": "375 (6 windows, REAL_MODELS)"},
}


def _lat(cell: dict[str, Any], rt: str) -> str:
    x = cell.get("latency", {}).get(rt)
    if not x:
        return "—"
    return f"{x['p50_ms']:.3g} ({x['latency_vs_fp32']:.2f}x)"


def _row(model: str, task: str, v: str, cell: dict[str, Any], rts: list[str]) -> str:
    label = LABELS.get(v, v)
    anchor = ANCHORS.get(model, {}).get(v, "")
    if "skipped" in cell or "error" in cell:
        note = " ".join((cell.get("skipped") or f"error: {cell['error'][:120]}").split())
        return f"| {label} | " + " | ".join(["—"] * (len(METRICS[task]) + 2 + len(rts))) + f" | {anchor} ({note}) |"
    wt = cell.get("info", {}).get("weight_types")
    if v == "nncf_wc4" and wt and not any("4" in k for k in wt):
        anchor += " (here: no INT4 weight in the file — NNCF keeps convolutions, and the last layer, the only "\
                  "MatMul, in its INT8_ASYM backup mode, so on this CNN it equals INT8_ASYM)"
    m = cell["metrics"]
    mets = [f"{m[k]:.{d}f}" if k in m else "—" for k, _, d in METRICS[task]]
    size = " / ".join(f"{s:.3g}" for s in dict.fromkeys(cell["size_mb"].values()))
    return (f"| {label} | {cell['fidelity_runtime']} | " + " | ".join(mets) + f" | {size} | "
            + " | ".join(_lat(cell, rt) for rt in rts) + f" | {anchor} |")


def model_table(model: str, entry: dict[str, Any]) -> list[str]:
    """One Markdown table for a model's cells."""
    sub = entry["subset"]
    task = sub["task"]
    cells = entry.get("cells", {})
    rts = ["onnxruntime", "openvino"]
    if any("openvino+dynquant" in c.get("latency", {}) for c in cells.values()):
        rts.append("openvino+dynquant")
    if any("tflite" in c.get("latency", {}) for c in cells.values()):
        rts.append("tflite")
    ref = next((c["reference"] for c in cells.values() if "reference" in c), {})
    n = next((c["samples"] for c in cells.values() if "samples" in c), "?")
    lines = [f"### {TITLES.get(model, model)}", "",
             f"Subset: task `{task}`, options {sub['options'] or 'defaults'}, limit {sub['limit']} "
             f"({n} samples scored); torch FP32 on the same subset: "
             + ", ".join(f"{k} {v:.4g}" for k, v in ref.items()) + f". Latency input {sub['latency_input']}.", "",
             "| variant | scored on | " + " | ".join(h for _, h, _ in METRICS[task]) + " | MB | "
             + " | ".join(f"{rt} p50 ms (vs FP32)" for rt in rts) + " | ANCHORS (fidelity; latency; size) |",
             "|---|---|" + "---|" * len(METRICS[task]) + "---|" + "---|" * len(rts) + "---|"]
    order = [v for v in LABELS if v in cells] + [v for v in cells if v not in LABELS]
    lines += [_row(model, task, v, cells[v], rts) for v in order]
    return lines + [""]


NOTES = """Notes
- Latency: each variant's p50 is measured in the same loop as the FP32 file of the same runtime (calls
  alternating, 2 threads, batch 1); "vs FP32" is variant / FP32, below 1 is faster. The FP32 row times FP32
  against itself (a noise check). Absolute ms drift with the shared machine's load; the ratios are the claim.
- Fidelity is scored through the exported file in the first runtime it has (ONNX Runtime for edgekit's files,
  OpenVINO for NNCF's, ONNX Runtime for ORT quantization). OpenVINO sessions run with its on-the-fly activation
  quantization off (edgekit's default); `openvino+dynquant` is OpenVINO's own default for int-weight layers.
- MB: the file(s) a runtime loads (OpenVINO: .xml + .bin); several sizes are ORT / OpenVINO.
- NNCF and ORT quantized files have no torch twin: edgekit's export validation is skipped for them (recorded in the
  JSON); edgekit's RTN / magnitude files are validated against torch on ONNX Runtime.
- Tool settings: documented defaults, plus: NNCF PTQ on MiniLM with model_type=TRANSFORMER; NNCF INT4 with
  group_size_fallback_mode=ADJUST (SmolLM2's 576-wide inputs get groups of 64); ORT quantization on
  quant_pre_process output (for MiniLM its symbolic shape inference fails on the exporter's Min(512, seq) dim,
  so it ran with skip_symbolic_shape=True). edgekit RTN quantizes Conv/Linear only: MiniLM's 47 MB word
  embedding stays FP32, while SmolLM2's embedding is its tied lm_head and is quantized with it (at W4 that alone
  takes perplexity from 29.9 to 50.8).
- LiteRT: FP32 and edgekit files are converted by litert-torch at the latency input's static shape (MiniLM: 128
  tokens, so wordnet10 texts are cut at 128 instead of 256 on LiteRT); LiteRT peers are ai-edge-quantizer recipes
  on that FP32 file (dynamic_wi8_afp32; static_wi8_ai8 calibrated on the 300 samples, padded to the static shape).
  SmolLM2 has no LiteRT file here (the 135M decoder at a static 512-token window was not converted).
- ANCHORS figures were measured on a quiet machine; this run shared 2 cores with other jobs (load ~5), so
  absolute ms are 2-3x ANCHORS' and ratios carry about +-0.1 of noise (identical-compute files such as the
  magnitude-pruned ones read 0.90-1.07x).
"""


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    """Write the tables for every model in the JSON."""
    lines = ["# Peer baselines against FP32 (benchmarks/baselines.py)", "",
             (f"Host: {doc['meta']['host']}, {doc['meta']['cpus']} CPUs, {doc['meta']['threads']} threads; "
              f"updated {doc['meta']['updated']}."), ""]
    for mk, entry in doc.get("models", {}).items():
        lines += model_table(mk, entry)
    path.write_text("\n".join(lines + [NOTES]))
