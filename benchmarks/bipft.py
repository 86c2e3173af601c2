"""BiPFT on all-MiniLM-L6-v2: naive binarization vs estimators vs estimators + distillation, WordNet-10 probe.

Parts (each merges its keys into benchmarks/results/bipft.json):
* corpus:  the distillation text (paragraphs): WordNet 3.0 glosses of every part of speech except the probe's test
           glosses, stdlib module/class/function docstrings (not pydoc topics: those are the retrieval set), and the
           licence texts in /usr/share/common-licenses. Written to --corpus.
* pack:    MiniLM as an fp16 HF folder + the corpus into --dir, for the GPU machine (its files travel in 64 MiB).
* train-cli: (GPU) BiPFT + distillation through the product, `edgekit compress minilm --method bipft --data CORPUS
           --set train_steps=N --set device=cuda --set save_binary=F ...` (benchmarks/on_device.py run bipft ...),
           writing the trained student compactly (save_binary) to --out.
* cli:     (here, CPU) the goal table through the product: `edgekit compress minilm --method bipft ...` per row
           (naive W1A1: rank=0, no fit, no distillation; BWN weights only: binary_act=false; estimators fitted
           without distillation; the trained row with --set load_binary=F from train-cli, packed and int8 storage),
           `edgekit eval ART --task wordnet10`, and one `edgekit profile minilm ART...` for the latency; key `cli`.
* cli-latency: the `edgekit profile` timing of the cli part's trained artifacts again (a timing-protocol change);
           the rows' fidelity is kept, the run that made them is kept as `rows_provenance`.
Run:  python benchmarks/bipft.py corpus|pack|train-cli|cli|cli-latency [options]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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


def cli_latency(rounds: int) -> dict:
    """Re-time the cli part's two trained artifacts against FP32 (the same `edgekit profile` command)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _product import artifact_of, profile_vs_fp32

    old = json.loads(OUT.read_text())["cli"]
    arts = [artifact_of(old["rows"][f"bipft_kd_gpu_{st}"]) for st in ("packed", "int8")]
    old["rows_provenance"] = old.get("rows_provenance") or old.get("provenance")  # the run that made the rows
    old["latency"] = profile_vs_fp32("minilm", arts, ["host", "intel-cpu-openvino"], rounds)
    res = {k: v for k, v in old.items() if k != "provenance"}
    _save("cli", res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["corpus", "pack", "train-cli", "cli", "cli-latency"])
    ap.add_argument("--steps", type=int, default=5700, help="train-cli: distillation steps")
    ap.add_argument("--src", default="minilm", help="train-cli: the model source edgekit compresses")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bipft-cli"), help="cli: artifact folder")
    ap.add_argument("--rounds", type=int, default=20, help="cli: interleaved profile rounds")
    ap.add_argument("--corpus", type=Path, default=Path(".xfer/bipft/corpus.txt"))
    ap.add_argument("--dir", type=Path, default=Path(".xfer/bipft"))
    ap.add_argument("--out", type=Path, default=Path(".xfer/bipft/out"))
    ap.add_argument("--trained", type=Path, default=None, help="cli: train-cli's save_binary file")
    ap.add_argument("--train-json", type=Path, default=None, help="cli: train-cli's train_cli.json")
    ap.add_argument("--device", default="cpu", help="train-cli: training device")
    ap.add_argument("--batch", type=int, default=64, help="train-cli: distillation batch size")
    ap.add_argument("--lr", type=float, default=2e-4, help="train-cli: learning rate")
    a = ap.parse_args()
    if a.part == "corpus":
        print(corpus(a.corpus), "paragraphs")
    elif a.part == "pack":
        pack(a.dir)
    elif a.part == "train-cli":
        train_cli(a.corpus, a.out, a.steps, a.device, a.batch, a.lr, a.src)
    elif a.part == "cli-latency":
        cli_latency(a.rounds)
    else:
        cli(a.trained, a.train_json, a.corpus, a.work, a.rounds)


if __name__ == "__main__":
    main()
