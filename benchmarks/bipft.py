"""BiPFT on all-MiniLM-L6-v2: naive binarization vs estimators vs estimators + distillation, WordNet-10 probe.

Parts (each merges its keys into benchmarks/results/bipft.json):
* corpus:  the distillation text (paragraphs): WordNet 3.0 glosses of every part of speech except the probe's test
           glosses, stdlib module/class/function docstrings (not pydoc topics: those are the retrieval set), and the
           licence texts in /usr/share/common-licenses. Written to --corpus.
* pack:    MiniLM as an fp16 HF folder + the corpus into --dir, for the GPU machine (its files travel in 64 MiB).
* train:   (GPU) times 40 steps, then distils for as many steps as fit --budget-s through the public method
           (edgekit.methods.bipft.apply, device=cuda), writing the trained student compactly (save_binary) to --out.
* eval:    (here, CPU) FP32; naive W1A1 (rank=0, no fit, no distillation); BWN weights only (binary_act=false);
           estimators fitted without distillation; BiPFT + distillation loaded from --trained (load_binary), probed
           with the FP32 head and with a head fitted on its own embeddings; a CPU-budget distillation.
* train-cli: (GPU) the same distillation through the product, `edgekit compress minilm --method bipft --data CORPUS
           --set train_steps=N --set device=cuda --set save_binary=F ...` (benchmarks/on_device.py run bipft ...).
* cli:     (here) the goal table through the product: `edgekit compress minilm --method bipft ...` per row (the trained
           row with --set load_binary=F from train-cli), `edgekit eval ART --task wordnet10`, and one
           `edgekit profile minilm ART...` for the latency; key `cli`.
Run:  python benchmarks/bipft.py corpus|pack|train|eval|train-cli|cli [options]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parent / "results" / "bipft.json"
WN = {"max_len": 128}


def _save(part: str, res: dict) -> None:
    """Merge one part's results into the JSON file (with the exact command and provenance)."""
    from edgekit.profile import provenance

    OUT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    old[part] = {**res, "provenance": provenance(threads=2)}
    OUT.write_text(json.dumps(old, indent=1))


def corpus(path: Path) -> int:
    """Write the distillation corpus (module doc); returns the paragraph count."""
    import importlib
    import pkgutil

    from edgekit.eval.wordnet import Config as WC
    from edgekit.eval.wordnet import load_glosses

    test = set(load_glosses(WC())[2])
    paras = []
    for pos in ("noun", "verb", "adj", "adv"):
        f = Path(f"/usr/share/wordnet/data.{pos}")
        if f.is_file():
            for line in f.read_text(errors="replace").splitlines():
                if not line.startswith(" ") and "|" in line:
                    g = line.split("|", 1)[1].strip()
                    if g not in test:
                        paras.append(g)
    for mod in sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.endswith("python3.11")
                      and not m.name.startswith(("_", "test", "idlelib", "tkinter", "turtle", "antigravity", "this"))):
        try:
            m = importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - some stdlib modules need a display or a platform
            continue
        for obj in [m, *vars(m).values()]:
            doc = getattr(obj, "__doc__", None) if callable(obj) or obj is m else None
            if isinstance(doc, str) and len(doc) > 80 and getattr(obj, "__module__", mod) == mod:
                paras += [p.strip() for p in doc.split("\n\n") if len(p.strip()) > 40]
    for f in sorted(Path("/usr/share/common-licenses").glob("*")):
        if f.is_file():
            paras += [p.strip() for p in f.read_text(errors="replace").split("\n\n") if len(p.strip()) > 40]
    paras = list(dict.fromkeys(p.replace("\n\n", "\n") for p in paras))
    path.write_text("\n\n".join(paras))
    return len(paras)


def pack(folder: Path) -> None:
    """fp16 MiniLM HF folder + corpus for the device (module doc)."""
    from edgekit.models.real import load_minilm, minilm_dir

    model, tok = load_minilm()
    (folder / "minilm").mkdir(parents=True, exist_ok=True)
    model.bert.half().save_pretrained(folder / "minilm")
    tok.save_pretrained(folder / "minilm")
    print(corpus(folder / "corpus.txt"), "paragraphs;", minilm_dir())


def _student_opts(**kw) -> dict:
    return {"progress": False, **kw}


def train(model_dir: Path, corpus_path: Path, out: Path, budget_s: float, device: str, batch: int, lr: float,
          attn_weight: float) -> None:
    """Distil on the GPU for as many steps as fit the budget (module doc)."""
    import transformers

    from edgekit.data import open_data
    from edgekit.methods import bipft
    from edgekit.models.real import MeanPooledEncoder

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bert = transformers.AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    model = MeanPooledEncoder(bert).eval()
    data = open_data(corpus_path)
    base = {"device": device, "batch_size": batch, "lr": lr, "attn_weight": attn_weight, "seed": 0}
    t0 = time.perf_counter()
    bipft.apply(copy.deepcopy(model), bipft.Config(**_student_opts(train_steps=40, fit_steps=0, **base)), data)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / 40  # includes α init and teacher copy: an upper bound
    steps = int(max(100, min(20000, budget_s / per_step)) // 100 * 100)
    print(f"{per_step * 1000:.1f} ms/step (upper bound) -> {steps} steps", flush=True)
    opts = _student_opts(train_steps=steps, save_binary=str(out / "minilm_bipft.safetensors"), progress=True, **base)
    t0 = time.perf_counter()
    _, rep = bipft.apply(model, bipft.Config(**opts), data)
    rec = {"options": opts, "corpus_paragraphs": len(data), "train_seconds": time.perf_counter() - t0,
           "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None, "torch": torch.__version__,
           "ms_per_step_estimate": per_step * 1000, "report_extra": rep.extra,
           "command": f"python benchmarks/bipft.py train --model-dir {model_dir} --corpus {corpus_path} --out OUT "
                      f"--budget-s {budget_s} --device {device} --batch {batch} --lr {lr} --attn-weight {attn_weight}"}
    (out / "train.json").write_text(json.dumps(rec, indent=1, default=str))
    print(json.dumps({k: rec[k] for k in ("train_seconds", "corpus_paragraphs")}), rep.extra.get("distillation"))


def _own_head(model: torch.nn.Module) -> float:
    """Probe accuracy with a head fitted on the model's own train embeddings (unit length, logistic regression C=1,
    the same recipe edgekit.eval.wordnet uses for the FP32 head)."""
    from sklearn.linear_model import LogisticRegression

    from edgekit.eval.wordnet import Config as WC
    from edgekit.eval.wordnet import load_glosses
    from edgekit.models.real import minilm_tokenizer

    tok = minilm_tokenizer()
    tr, ytr, te, yte = load_glosses(WC(**WN))

    def emb(texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 32):
                enc = tok(texts[i:i + 32], truncation=True, max_length=128, padding=True, return_tensors="pt")
                out.append(model(enc["input_ids"], enc["attention_mask"]).numpy())
        e = np.concatenate(out)
        return e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)

    head = LogisticRegression(C=1.0, max_iter=3000).fit(emb(tr), ytr)
    return float((head.predict(emb(te)) == yte).mean())


def evaluate_variants(trained: Path | None, train_json: Path | None, corpus_path: Path, cpu_steps: int,
                      rows: list[str] | None = None, key: str = "eval") -> dict:
    """The goal table's rows through the public API (module doc)."""
    from edgekit.data import open_data
    from edgekit.eval import evaluate
    from edgekit.methods import bipft
    from edgekit.models.real import load_minilm

    torch.manual_seed(0)
    model, _ = load_minilm()
    data = open_data(corpus_path)
    fp = evaluate(model, "wordnet10", options=WN)["metrics"]
    res = {"fp32": fp, "rows": []}
    print(f"FP32 probe {fp['probe_accuracy']:.3f}", flush=True)
    variants = [
        ("naive_w1a1", "naive binarization W1A1 (BWN weights, binary activations), no estimators, no distillation",
         {"rank": 0, "fit_steps": 0, "train_steps": 0}),
        ("bwn_w1a32", "naive BWN weights only (activations FP), no distillation",
         {"rank": 0, "fit_steps": 0, "train_steps": 0, "binary_act": False}),
        ("estimators_no_kd", "BiPFT estimators (rank 1) fitted to their residual, no distillation",
         {"rank": 1, "fit_steps": 100, "train_steps": 0}),
        (f"bipft_kd_cpu{cpu_steps}", f"BiPFT + distillation, CPU smoke budget ({cpu_steps} steps x 16 texts)",
         {"rank": 1, "fit_steps": 50, "train_steps": cpu_steps}),
    ]
    if trained is not None:
        tr = json.loads(train_json.read_text()) if train_json else {}
        d = tr.get("report_extra", {}).get("distillation", {})
        variants.append(("bipft_kd_gpu", f"BiPFT + distillation on {tr.get('gpu')} ({d.get('steps')} steps x "
                         f"{d.get('batch_size')} texts, {d.get('seconds', 0):.0f} s), loaded with load_binary",
                         {"load_binary": str(trained)}))
        res["gpu_training"] = tr
    if rows:
        variants = [v for v in variants if v[0] in rows]
    order = ["bipft_kd_gpu", "naive_w1a1", "estimators_no_kd", "bwn_w1a32"]  # the goal table's rows first
    variants.sort(key=lambda v: order.index(v[0]) if v[0] in order else len(order))
    for name, what, opts in variants:
        t0 = time.perf_counter()
        m, rep = bipft.apply(copy.deepcopy(model), bipft.Config(progress=False, **opts), data)
        r = evaluate(m.eval(), "wordnet10", options=WN)["metrics"]
        row = {"variant": name, "what": what, "options": opts, "probe_accuracy": r["probe_accuracy"],
               "cosine": r["cosine"], "retrieval_top1": r["retrieval_top1"],
               "bits_per_encoder_linear_weight": rep.extra["bits_per_encoder_linear_weight"],
               "bits_per_encoder_weight_with_fp_side_params": rep.extra["bits_per_encoder_weight_with_fp_side_params"],
               "distillation": rep.extra.get("distillation"), "estimator_fit": rep.extra.get("estimator_fit"),
               "seconds": time.perf_counter() - t0}
        if name == "bipft_kd_gpu":
            row["probe_own_head"] = _own_head(m)
            res["fp32"]["probe_own_head"] = _own_head(model)
        res["rows"].append(row)
        print(f"{name:18s} probe {row['probe_accuracy']:.3f} cos {row['cosine']:.3f} "
              f"own-head {row.get('probe_own_head', float('nan')):.3f}", flush=True)
        _save(key, res)
    return res


CLI_ROWS = {  # name -> (what, bipft options); every row `edgekit compress minilm --method bipft ...` + `edgekit eval`
    "naive_w1a1": ("naive binarization W1A1 (BWN weights, binary activations), no estimators, no distillation",
                   {"rank": 0, "fit_steps": 0, "train_steps": 0}),
    "bwn_w1a32": ("naive BWN weights only (activations FP), no distillation",
                  {"rank": 0, "fit_steps": 0, "train_steps": 0, "binary_act": False}),
    "estimators_no_kd": ("BiPFT estimators (rank 1) fitted to their residual, no distillation",
                         {"rank": 1, "fit_steps": 100, "train_steps": 0}),
}


def train_cli(corpus_path: Path, out: Path, steps: int, device: str, batch: int, lr: float, src: str,
              art: Path = Path("/tmp/bipft-train-art")) -> dict:
    """(GPU host) BiPFT + distillation through the product: `edgekit compress SRC --method bipft --data CORPUS
    --set train_steps=N ... --set save_binary=OUT/minilm_bipft.safetensors --target onnxruntime -o ART`; the
    binary student travels back in save_binary's compact form (sign bits packed 8 a byte) for `cli` here."""
    out.mkdir(parents=True, exist_ok=True)
    sets = {"train_steps": steps, "batch_size": batch, "lr": lr, "device": device, "seed": 0, "progress": False,
            "save_binary": str(out / "minilm_bipft.safetensors")}
    argv = ["compress", src, "--method", "bipft", "--data", str(corpus_path),
            *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")], "--target", "onnxruntime",
            "-o", str(art), "--overwrite"]
    import edgekit
    from edgekit.api import open_data, read_manifest

    t0 = time.perf_counter()  # what that command runs (the API, in process: the GPU host has no typer/rich)
    edgekit.compress(src, "bipft", sets, art, data=open_data(corpus_path), runtimes=["onnxruntime"],
                     overwrite=True)
    man = read_manifest(art)
    rec = {"command": "edgekit " + " ".join(argv), "seconds": time.perf_counter() - t0,
           "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None, "torch": torch.__version__,
           "report_extra": man["method"]["report"]["extra"]}
    (out / "train_cli.json").write_text(json.dumps(rec, indent=1, default=str))
    print(json.dumps({k: rec[k] for k in ("command", "seconds")}), flush=True)
    return rec


def cli(trained: Path | None, train_json: Path | None, corpus_path: Path, work: Path, rounds: int) -> dict:
    """The goal table through the product (here, CPU): each row an `edgekit compress minilm --method bipft ...`
    artifact scored by `edgekit eval ART --task wordnet10 --runtime onnxruntime --set max_len=128`; the trained row
    loads the GPU run's student (`--set load_binary=F`, packed and int8 storage); latency of those two artifacts
    against FP32 by one `edgekit profile minilm ART... --target host --target intel-cpu-openvino`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _product import artifact_of, profile_vs_fp32, run_row

    rows: dict = {}
    res: dict = {"rows": rows}
    for n, (w, o) in CLI_ROWS.items():
        rows[n] = {"what": w, **run_row("minilm", "bipft", {**o, "progress": False}, work / n, data=corpus_path,
                                        task="wordnet10", eval_opts=WN)}
        print(n, rows[n].get("metrics") or rows[n].get("error"), flush=True)
        _save("cli", res)
    if trained is not None:
        tr = json.loads(train_json.read_text()) if train_json else {}
        res["gpu_training"] = tr
        for st in ("packed", "int8"):  # OpenVINO in the compress itself: validated against the torch model there
            rows[f"bipft_kd_gpu_{st}"] = {
                "what": f"BiPFT + distillation trained by `{tr.get('command', '?')}` on {tr.get('gpu')}, loaded with "
                        f"load_binary, storage={st}",
                **run_row("minilm", "bipft", {"load_binary": str(trained), "storage": st}, work / f"gpu_{st}",
                          targets=("onnxruntime", "openvino"), task="wordnet10", eval_opts=WN)}
            print(st, rows[f"bipft_kd_gpu_{st}"].get("metrics") or rows[f"bipft_kd_gpu_{st}"].get("error"), flush=True)
            _save("cli", res)
        arts = [artifact_of(rows[f"bipft_kd_gpu_{st}"]) for st in ("packed", "int8")]
        res["latency"] = profile_vs_fp32("minilm", arts, ["host", "intel-cpu-openvino"], rounds)
        _save("cli", res)
    return res

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["corpus", "pack", "train", "eval", "train-cli", "cli"])
    ap.add_argument("--steps", type=int, default=5700, help="train-cli: distillation steps")
    ap.add_argument("--src", default="minilm", help="train-cli: the model source edgekit compresses")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bipft-cli"), help="cli: artifact folder")
    ap.add_argument("--rounds", type=int, default=20, help="cli: interleaved profile rounds")
    ap.add_argument("--corpus", type=Path, default=Path(".xfer/bipft/corpus.txt"))
    ap.add_argument("--dir", type=Path, default=Path(".xfer/bipft"))
    ap.add_argument("--model-dir", type=Path, default=Path(".xfer/bipft/minilm"))
    ap.add_argument("--out", type=Path, default=Path(".xfer/bipft/out"))
    ap.add_argument("--trained", type=Path, default=None)
    ap.add_argument("--train-json", type=Path, default=None)
    ap.add_argument("--budget-s", type=float, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--attn-weight", type=float, default=0.0)
    ap.add_argument("--cpu-steps", type=int, default=100)
    ap.add_argument("--rows", default="", help="eval: only these variants (comma-separated keys)")
    ap.add_argument("--key", default="eval", help="eval: results key (default eval)")
    a = ap.parse_args()
    if a.part == "corpus":
        print(corpus(a.corpus), "paragraphs")
    elif a.part == "pack":
        pack(a.dir)
    elif a.part == "train":
        a.out.mkdir(parents=True, exist_ok=True)
        train(a.model_dir, a.corpus, a.out, a.budget_s, a.device, a.batch, a.lr, a.attn_weight)
    elif a.part == "eval":
        evaluate_variants(a.trained, a.train_json, a.corpus, a.cpu_steps, [r for r in a.rows.split(",") if r], a.key)
    elif a.part == "train-cli":
        train_cli(a.corpus, a.out, a.steps, a.device, a.batch, a.lr, a.src)
    else:
        cli(a.trained, a.train_json, a.corpus, a.work, a.rounds)


if __name__ == "__main__":
    main()
