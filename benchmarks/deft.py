"""DEFT benchmark (issue 19): PEFT (density_weight=0) vs DEFT on MiniLM (WordNet-10 classifier) and SmolLM2 (LoRA on
Python docs), density measured held-out in fp32, and the latency of the block-skipping export vs the dense one.

Parts (JSON merged into benchmarks/results/deft.json; every entry records its command):
* pack    (CPU) the inputs of the GPU part, into the git-ignored .xfer/: WordNet-10 glosses of the eval task
          (edgekit.eval.wordnet.load_glosses, 150 train / 100 test per class) as `label<TAB>gloss` files (MiniLM
          travels as `benchmarks/bipft.py pack` packs it, fp16: the device has no model packages and one transfer is
          capped at 64 MiB; the LoRA weights trained on it are merged into the fp32 weights here, and every reported
          figure is measured here); the
          Python-docs text tokenised with SmolLM2's tokenizer: the first 16 x 512 tokens (the perplexity task's
          windows) held out, the rest trained on. (SmolLM2 itself travels as benchmarks/on_device.py packs it.)
* train   (GPU) one `edgekit compress MODEL --method deft --set device=cuda --set save_peft=F` per variant of
          --model: PEFT, DEFT (density_weight 1), DEFT ReLU-ified (MiniLM), PEFT/DEFT with MLP blocks removed;
          the trained weights (save_peft) and the GPU-side records go to --out. Run there through
          `benchmarks/on_device.py run deft ...` (it serves the bundled models from the packed copies).
* export  (CPU) `edgekit.compress(MODEL, "deft", {load_peft: ...})` per variant: merge, export (ONNX Runtime +
          OpenVINO, validated), held-out task metric and density in fp32 here; then the dense (merged PEFT) and the
          block-skipping exports timed interleaved on ONNX Runtime and OpenVINO (1 x 128, 2 threads).

    python benchmarks/deft.py --part pack && python benchmarks/on_device.py pack
    python benchmarks/on_device.py run deft --part train --model minilm --device cuda --steps 600 --out DIR  # GPU
    python benchmarks/deft.py --part export --model minilm --trained-dir DIR
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = ROOT / "benchmarks" / "results" / "deft.json"
XDIR = ROOT / ".xfer" / "deft"
SKIP_MINILM = 2  # of 6 MLP blocks
SKIP_SMOL = 6  # of 30


def _save(part: str, res: dict) -> None:
    from edgekit.profile import provenance

    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old[part] = {**res, "provenance": provenance(threads=2)}
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(old, indent=1))
    tmp.replace(RESULTS)


def _row(man: dict) -> dict:
    """The held-out figures of one artifact's DEFT report."""
    e = man["method"]["report"]["extra"]
    d = e["heldout"]["density"]
    row = {k: d[k] for k in ("tau", "exact", "thr", "exact_tok", "thr_tok")}
    row.update({k: e["heldout"].get(k) for k in ("accuracy", "perplexity")})
    row.update(skipped_blocks=e["skipped_blocks"], merge=e["merge"], training=e["training"],
               thr_tok_per_layer=d["thr_tok_per_layer"], exact_tok_per_layer=d["exact_tok_per_layer"],
               sparse_hw_estimate=e["sparse_hw_estimate"], fidelity=man["fidelity"].get("value"),
               validation_onnx=min(o["cosine"] for o in man["validation"]["onnx"]["outputs"].values()))
    return row


def _latency(arts: dict[str, Path], names: list[str], reps: int) -> dict:
    """`edgekit profile ART... --target host --target intel-cpu-openvino --rounds N`: the artifacts interleaved on
    ONNX Runtime and OpenVINO, p50 ms and the ratio to the first (the dense merged PEFT model)."""
    import edgekit.api

    cmd = (f"edgekit profile {' '.join(str(arts[n]) for n in names)} --target host --target intel-cpu-openvino "
           f"--rounds {reps}")
    doc = edgekit.api.profile([str(arts[n]) for n in names], ["host", "intel-cpu-openvino"], rounds=reps)
    out: dict = {"command": cmd}
    for res in doc["results"]:
        if res["status"] != "ok":
            raise RuntimeError(f"edgekit profile on {res['target']} failed: {res.get('error')}")
        p50 = {n: f["timing_ms"]["p50"] for n, f in zip(names, res["files"])}
        out[res["runtime"]] = {"p50_ms": p50, "ratio_to_first": {n: p50[n] / p50[names[0]] for n in names},
                               "ratio_ci": {n: (f.get("ratio") or {}).get("ci95") for n, f in zip(names, res["files"])},
                               "target": res["target"], "rounds": res.get("rounds")}
    return out


WN = XDIR / "wordnet"
LM = ROOT / ".xfer" / "deftlm"
VARIANTS = {
    "minilm": {"peft": {"density_weight": 0.0}, "deft": {"density_weight": 1.0},
               "deft_l10": {"density_weight": 10.0},
               "peft_relu": {"density_weight": 0.0, "relu": True},
               "deft_relu": {"density_weight": 1.0, "relu": True},
               "peft_skip": {"density_weight": 0.0, "skip_blocks": SKIP_MINILM},
               "deft_skip": {"density_weight": 1.0, "skip_blocks": SKIP_MINILM}},
    "smollm2": {"peft": {"density_weight": 0.0}, "deft": {"density_weight": 1.0},
                "deft_l10": {"density_weight": 10.0},
                "deft_skip": {"density_weight": 1.0, "skip_blocks": SKIP_SMOL}}}


def base_options(model: str, steps: int) -> dict:
    """Training options shared by the variants of one model."""
    if model == "minilm":
        return {"train_steps": steps, "batch_size": 32, "lr": 1e-3, "head_lr": 3e-3, "max_len": 64,
                "eval_limit": 1000, "eval_batch_size": 64, "progress": False}
    return {"train_steps": steps, "batch_size": 8, "max_len": 512, "lr": 3e-4, "eval_limit": 16,
            "eval_batch_size": 4, "progress": False, "skip_examples": 32}


def part_pack() -> None:
    from edgekit.eval.perplexity import load_text
    from edgekit.eval.wordnet import Config as WC
    from edgekit.eval.wordnet import load_glosses
    from edgekit.models.real import smollm2_tokenizer

    WN.mkdir(parents=True, exist_ok=True)
    tr, ytr, te, yte = load_glosses(WC())
    (WN / "train.txt").write_text("\n".join(f"{y}\t{t}" for t, y in zip(tr, ytr)))
    (WN / "test.txt").write_text("\n".join(f"{y}\t{t}" for t, y in zip(te, yte)))
    LM.mkdir(parents=True, exist_ok=True)
    stok = smollm2_tokenizer()
    ids = stok(load_text("python_docs"), add_special_tokens=False)["input_ids"]
    (LM / "eval.txt").write_text(stok.decode(ids[:16 * 512]))
    (LM / "train.txt").write_text(stok.decode(ids[16 * 512:]))
    print("packed: glosses", len(tr), len(te), "| docs tokens held out", 16 * 512, "trained", len(ids) - 16 * 512)


def _files(model: str) -> tuple[Path, Path]:
    return (WN / "train.txt", WN / "test.txt") if model == "minilm" else (LM / "train.txt", LM / "eval.txt")


def part_train(model: str, dev: str, steps: int, out: Path, only: list[str] | None) -> None:
    """(GPU host, through benchmarks/on_device.py run deft ..., which serves the bundled `minilm`/`smollm2` there)
    Each variant is one `edgekit compress MODEL --method deft --data train.txt --set device=cuda --set
    save_peft=F ...` (the API in process: the GPU host has no typer/rich); the trained PEFT weights and the records
    (command, held-out figures there, seconds) travel back for `export` here."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True  # training only: the held-out figures are measured with TF32 off

    import edgekit
    from edgekit.api import read_manifest

    train_f, eval_f = _files(model)
    out.mkdir(parents=True, exist_ok=True)
    recs = {}
    for name, o in VARIANTS[model].items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        opts = {**base_options(model, steps), **o, "device": dev, "eval_data": str(eval_f),
                "save_peft": str(out / f"{model}_{name}.safetensors")}
        art = out / f"art_{model}_{name}"
        edgekit.compress(model, "deft", opts, art, data=str(train_f), overwrite=True)
        man = read_manifest(art)
        e = man["method"]["report"]["extra"]
        sets = "".join(f" --set {k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in opts.items()
                       if k not in ("eval_data", "save_peft"))
        recs[name] = {"options": man["method"]["config"], "heldout": e["heldout"], "training": e["training"],
                      "skipped": e["skipped_blocks"], "seconds": time.perf_counter() - t0,
                      "command": f"edgekit compress {model} --method deft{sets} --set eval_data={eval_f.name} "
                                 f"--set save_peft={model}_{name}.safetensors --data {train_f.name} -o {art.name}",
                      "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else None,
                      "torch": torch.__version__}
        shutil.rmtree(art)  # only the PEFT weights travel back; the artifact is rebuilt from them here
        metric = e["heldout"].get("accuracy", e["heldout"].get("perplexity"))
        print(name, "metric", round(metric, 4), "thr_tok", round(e["heldout"]["density"]["thr_tok"], 4),
              "skipped", e["skipped_blocks"], f"{recs[name]['seconds']:.0f}s", flush=True)
        tag = "_".join(only) if only else "all"
        (out / f"{model}_train_{tag}.json").write_text(json.dumps(recs))


def _goals(model: str, rows: dict, lat: dict | None) -> dict:
    """The issue's goal figures from what has been measured so far."""
    key = "accuracy" if model == "minilm" else "perplexity"
    p, d = rows.get("peft"), rows.get("deft")
    g: dict = {}
    if p and d:
        g.update({f"{key}_peft": p[key], f"{key}_deft": d[key],
                  "quality_goal_met": (d[key] >= p[key] - 0.01) if model == "minilm" else (d[key] <= 1.05 * p[key]),
                  "thr_density_rel_drop": 1 - d["thr_tok"] / p["thr_tok"],
                  "density_goal_30pct": 1 - d["thr_tok"] / p["thr_tok"] >= 0.30})
    if lat:
        g.update(skip_latency_ort=lat["onnxruntime"]["ratio_to_first"]["deft_skip"],
                 skip_latency_ov=lat["openvino"]["ratio_to_first"]["deft_skip"])
    if "deft_skip" in rows:
        g[f"{key}_deft_skip"] = rows["deft_skip"][key]
    return g


def part_export(model: str, trained: Path, reps: int, work: Path | None, only: list[str] | None) -> dict:
    """Compress every trained variant here (an artifact already in `work` made from the same weights is reused),
    saving after each; the latency pair is timed as soon as both of its artifacts exist."""
    import edgekit
    from edgekit.artifact import read_manifest
    from edgekit.data import open_data

    work = work or Path(tempfile.mkdtemp(prefix=f"deft-{model}-"))
    train_f, eval_f = _files(model)
    data = open_data(train_f)
    recs = {}
    for f in sorted(trained.glob(f"{model}_train*.json")):
        recs.update(json.loads(f.read_text()))
    old = json.loads(RESULTS.read_text()).get(model, {}) if RESULTS.is_file() else {}
    rows, arts, lat = dict(old.get("rows", {})), {}, old.get("latency")
    shape = "1x128:int64,1x128:int64" if model == "minilm" else None
    metric = "accuracy" if model == "minilm" else "perplexity"
    timed = ["peft", "peft_skip", "deft_skip"] if model == "minilm" else ["peft", "deft_skip"]
    names = [v for v in (only or VARIANTS[model]) if v in recs]
    for name in names:
        dev_rec = recs[name]
        opts = {**{k: v for k, v in dev_rec["options"].items() if k not in ("device", "save_peft", "eval_data")},
                "load_peft": str(trained / f"{model}_{name}.safetensors"), "eval_data": str(eval_f)}
        t0 = time.perf_counter()
        prev = work / name / "manifest.json"
        if prev.is_file() and read_manifest(work / name)["method"]["config"].get("load_peft") == opts["load_peft"]:
            arts[name] = work / name
        else:
            arts[name] = edgekit.compress(model, "deft", opts, work / name, data=data, input_shape=shape,
                                          runtimes=["openvino"])
        rows[name] = {**_row(read_manifest(arts[name])), "options": opts, "seconds_here": time.perf_counter() - t0,
                      "trained_on": dev_rec["gpu"], "train_seconds": dev_rec["seconds"], "training": dev_rec["training"],
                      "train_command": dev_rec.get("command", "the method's apply (method level)"),
                      "heldout_on_gpu": {metric: dev_rec["heldout"][metric],
                                         "thr_tok": dev_rec["heldout"]["density"]["thr_tok"]}}
        r = rows[name]
        print(f"{name:10s} {metric} {r[metric]:.4f} thr_tok {r['thr_tok']:.4f} exact_tok {r['exact_tok']:.4f} "
              f"thr(all positions) {r['thr']:.4f} skipped {r['skipped_blocks']}", flush=True)
        if all(t in arts for t in timed) and (lat is None or name in timed):
            lat = _latency(arts, timed, reps)
            print(json.dumps({rt: v["ratio_to_first"] for rt, v in lat.items() if isinstance(v, dict)}), flush=True)
        res = {"rows": rows, "latency": lat, "goals": _goals(model, rows, lat),
               "latency_reference": "peft = the dense merged model (the source graph, plus the task head for MiniLM)",
               "train_command": f"python benchmarks/on_device.py run deft --part train --model {model} --device cuda "
                                f"--steps {dev_rec['options']['train_steps']} --out DIR"}
        _save(model, res)
    print(json.dumps(res["goals"], indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", required=True, choices=["pack", "train", "export"])
    ap.add_argument("--model", choices=["minilm", "smollm2"], default="minilm")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("/tmp/deft-trained"))
    ap.add_argument("--trained-dir", type=Path, default=Path("/tmp/deft-trained"))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--variants", default="", help="comma-separated subset of the variants, in this order")
    ap.add_argument("--work", type=Path, default=None, help="export: artifact folder (reused when re-run)")
    a = ap.parse_args()
    if a.part == "pack":
        part_pack()
    elif a.part == "train":
        part_train(a.model, a.device, a.steps, a.out, [v for v in a.variants.split(",") if v])
    else:
        part_export(a.model, a.trained_dir, a.reps, a.work, [v for v in a.variants.split(",") if v])


if __name__ == "__main__":
    main()
