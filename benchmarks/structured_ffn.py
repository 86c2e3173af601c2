"""Structured FFN on MiniLM (wordnet10) and SmolLM2 (perplexity) vs FP32 and magnitude pruning, through the product.

Parts (run one at a time, under nice; each writes its key of benchmarks/results/structured_ffn.json):
  python benchmarks/structured_ffn.py cli --model minilm --cli-projected --train-ratios 0.625 --train-steps 100
      (each row an `edgekit compress <model> --method structured_ffn ...` artifact scored by `edgekit eval ART`;
      key cli_<model>)
  python benchmarks/structured_ffn.py cli-latency [--model smollm2] [--runs 30]
      (`edgekit profile` of the cli artifacts against FP32, interleaved; key cli_<model>/latency)
Ratios 0.625 / 0.3125 are the paper's "63% / 32%" FFN parameters (of the replaced layers; block 0 stays dense).
Baselines at the same count: unstructured magnitude pruning of each replaced FFN weight to the same number of
nonzeros (`--method magnitude --set scope=ffn`; zeros only: no size/speed gain), and structured neuron pruning
(`kind=neurons`: intermediate neurons ranked by their in/out weight norms, physically removed). Recovery:
distillation (token-level MSE for MiniLM, KL for SmolLM2) on text disjoint from the evaluation (WordNet
verb/adjective glosses; stdlib module docstrings). `docstrings`, `stdlib_corpus` and TRAIN_TEXTS are also read by
benchmarks/on_device.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch

OUT = Path(__file__).parent / "results" / "structured_ffn.json"
KINDS = ("lowrank", "blockdense", "blockshuffle")
RATIOS = (0.625, 0.3125)
THREADS = 2


def log(*a) -> None:
    print(*a, flush=True)


def docstrings() -> list[str]:
    """Docstrings of stdlib modules and their public members: Python text disjoint from pydoc topics."""
    import importlib
    import inspect

    out = []
    for name in ("json", "os", "re", "collections", "itertools", "functools", "pathlib", "argparse", "logging",
                 "subprocess", "typing", "dataclasses", "datetime", "string", "textwrap", "shutil", "csv", "random"):
        mod = importlib.import_module(name)
        out.append(inspect.getdoc(mod) or "")
        out += [inspect.getdoc(getattr(mod, a)) or "" for a in dir(mod) if not a.startswith("_")
                and callable(getattr(mod, a, None)) and getattr(getattr(mod, a), "__module__", "") == name]
    return [t for t in out if len(t) > 40]


CORPUS_SKIP = {"this", "antigravity", "pydoc_data", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
               "ensurepip", "venv", "pydoc"}


def stdlib_corpus() -> list[str]:
    """A larger training text (~0.8 MB here): docstrings of every importable public stdlib module, its public
    classes, functions and methods (sorted, deduplicated; pydoc/pydoc_data, whose topics are the evaluation text,
    excluded)."""
    import contextlib
    import importlib
    import inspect
    import io
    import warnings

    seen, out = set(), []
    for name in sorted(sys.stdlib_module_names):
        if name in CORPUS_SKIP or name.startswith("_"):
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - platform-specific or deprecated modules are skipped
            continue
        objs = [mod]
        for a in sorted(dir(mod)):
            o = getattr(mod, a, None)
            if a.startswith("_") or getattr(o, "__module__", None) != name:
                continue
            if inspect.isclass(o) or inspect.isfunction(o) or inspect.isbuiltin(o):
                objs.append(o)
                if inspect.isclass(o):
                    objs += [f for m, f in sorted(vars(o).items()) if not m.startswith("_")
                             and (inspect.isfunction(f) or inspect.ismethoddescriptor(f))]
        for o in objs:
            d = (mod.__doc__ or "") if o is mod else (inspect.getdoc(o) or "")
            d = inspect.cleandoc(d) if d else ""
            if len(d) > 40 and d not in seen:
                seen.add(d)
                out.append(d)
    return out


TRAIN_TEXTS = {"docstrings": docstrings, "stdlib": stdlib_corpus}


def run_cli(args) -> None:
    """Rows through the product (key cli_<model>): `edgekit compress <model> --method structured_ffn ...` artifacts
    (recovery rows with --data TEXT.txt), scored by `edgekit eval ART` on their ONNX Runtime file. MiniLM: WordNet-10
    (--limit test glosses, default 200), training text the verb/adjective glosses; SmolLM2: perplexity of a 1x512
    artifact (16 + 8 windows), training text the stdlib corpus (--train-text)."""
    from _product import run_row

    from edgekit.profile import provenance

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    smol = args.model == "smollm2"
    if smol:
        texts = TRAIN_TEXTS[args.train_text]()
    else:
        texts = [ln.split("|", 1)[1].strip() for f in ("data.verb", "data.adj")
                 for ln in Path(f"/usr/share/wordnet/{f}").read_text(errors="replace").splitlines()
                 if "|" in ln and not ln.startswith(" ")]
        texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:4000]]
    train_txt = work / "train.txt"
    train_txt.write_text("\n\n".join(t.replace("\n\n", "\n") for t in texts), encoding="utf-8")
    key = f"cli_{args.model}"
    rows = [(k, r, 0) for r in args.cli_ratios for k in args.cli_kinds] if args.cli_projected else []
    rows += [(k, r, args.train_steps) for r in args.train_ratios for k in args.train_kinds]
    for kind, ratio, steps in rows:
        method, opts = "structured_ffn", {"kind": kind, "param_ratio": ratio}
        if kind == "magnitude":  # the unstructured baseline at the same FFN count, through the product too
            if steps:
                raise SystemExit("magnitude rows take no training steps; list magnitude in --cli-kinds only")
            method, opts = "magnitude", {"scope": "ffn", "sparsity": round(1 - ratio, 6)}
        if steps:
            opts.update(train_steps=steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr)
            if args.device != "cpu":
                opts["device"] = args.device
        tag = f"{kind}@{ratio}" + (f"+distill{steps}" if steps else "")
        row = run_row(args.model, method, opts, work / tag.replace("@", "_").replace("+", "_"),
                      data=train_txt if steps else None, targets=("onnxruntime",),
                      task="perplexity" if smol else "wordnet10", limit=None if smol else args.limit,
                      threads=THREADS, input_shape="1x512" if smol else None)
        log(tag, {k: v for k, v in row.items() if k not in ("options", "commands", "report_extra")})
        res = json.loads(OUT.read_text()) if OUT.is_file() else {}
        sec = res.setdefault(key, {"rows": {}})
        sec["setup"] = {"model": args.model, "eval": "perplexity, 1x512 artifact, 16 + 8 windows" if smol else
                        f"wordnet10, {args.limit} test glosses", "runtime": "onnxruntime",
                        "train_text": f"{'stdlib corpus' if smol else 'WordNet verb/adj glosses'} as paragraphs "
                                      f"({sum(map(len, texts))} chars)"}
        sec["rows"][tag] = {**row, "provenance": provenance(threads=THREADS)}
        OUT.write_text(json.dumps(res, indent=1))
        if smol:
            shutil.rmtree(work / tag.replace("@", "_").replace("+", "_"), ignore_errors=True)


def run_cli_latency(args) -> None:
    """`edgekit profile minilm ART...` on the cli part's projection-only lowrank (and neurons) artifacts (ONNX Runtime on the host,
    OpenVINO), interleaved with FP32 (exported by the profile itself); key cli_minilm/latency."""
    from _product import artifact_of, profile_vs_fp32

    from edgekit.profile import provenance

    if args.model == "smollm2":
        return cli_latency_smollm2(args)
    rows = json.loads(OUT.read_text())["cli_minilm"]["rows"]
    arts = [artifact_of(rows[t]) for t in ("lowrank@0.625", "lowrank@0.3125", "neurons@0.625", "neurons@0.3125")
            if t in rows and "error" not in rows[t]]
    lat = profile_vs_fp32("minilm", arts, ["host", "intel-cpu-openvino"], args.runs)
    res = json.loads(OUT.read_text())
    res["cli_minilm"]["latency"] = {**lat, "provenance": provenance(threads=THREADS)}
    OUT.write_text(json.dumps(res, indent=1))


SMOL_LATENCY_CASES = [("lowrank", 0.625), ("blockshuffle", 0.625), ("lowrank", 0.3125), ("blockdense", 0.3125),
                      ("blockshuffle", 0.3125)]


def cli_latency_smollm2(args) -> None:
    """SmolLM2 prefill through the product (key cli_smollm2/latency): `edgekit compress smollm2 --method
    structured_ffn --set kind=K --set param_ratio=R --input-shape 1x128` (projection only: a recovered model has the
    same layers and shapes, so the same speed), then `edgekit profile smollm2 ART... --input-shape 1x128` against
    the FP32 export the profile makes, interleaved, on ONNX Runtime (host) and OpenVINO."""
    import edgekit
    from _product import profile_vs_fp32

    from edgekit.profile import provenance

    work = Path(args.work)
    arts, cmds = [], []
    for kind, ratio in SMOL_LATENCY_CASES:
        art = work / f"lat_{kind}_{ratio}"
        t0 = time.perf_counter()
        if not (art / "manifest.json").is_file() or args.fresh:  # projection only: deterministic, reusable
            if art.exists():
                shutil.rmtree(art)
            edgekit.compress("smollm2", "structured_ffn", {"kind": kind, "param_ratio": ratio}, art,
                             runtimes=["onnxruntime"], input_shape="1x128")
        cmds.append(f"edgekit compress smollm2 --method structured_ffn --set kind={kind} --set param_ratio={ratio} "
                    f"--input-shape 1x128 --target onnxruntime -o {art}")
        log(cmds[-1], round(time.perf_counter() - t0, 1), "s")
        arts.append(art)
    lat = profile_vs_fp32("smollm2", arts, ["host", "intel-cpu-openvino"], args.runs, input_shape="1x128")
    sizes = {str(a): round(sum(f.stat().st_size for f in a.glob("model.onnx*")) / 2**20, 1) for a in arts}
    res = json.loads(OUT.read_text())
    res.setdefault("cli_smollm2", {"rows": {}})["latency"] = {
        "compress_commands": cmds, **lat, "onnx_mib": sizes, "provenance": provenance(threads=THREADS)}
    OUT.write_text(json.dumps(res, indent=1))
    for t in lat["result"]["results"]:
        log(t["runtime"], [(f["artifact"], (f.get("ratio") or {}).get("p50"), (f.get("timing_ms") or {}).get("p50"))
                           for f in t["files"]])


def main() -> None:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["cli", "cli-latency"])
    ap.add_argument("--limit", type=int, default=200, help="cli --model minilm: WordNet-10 test glosses")
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--train-ratios", type=float, nargs="*", default=[])
    ap.add_argument("--train-kinds", nargs="*", default=list(KINDS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--runs", type=int, default=30, help="cli-latency: interleaved profile rounds")
    ap.add_argument("--model", choices=["minilm", "smollm2"], default="minilm", help="cli / cli-latency: which model")
    ap.add_argument("--seq-len", type=int, default=128, help="recovery-training window (tokens)")
    ap.add_argument("--train-text", choices=sorted(TRAIN_TEXTS), default="docstrings",
                    help="SmolLM2 recovery text: 18 modules' docstrings (~130 kB) or the whole stdlib's (~0.8 MB)")
    ap.add_argument("--device", default="cpu", help="recovery-training device: cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads (evaluation)")
    ap.add_argument("--work", default="/tmp/edgekit-sffn-cli", help="cli: artifact folder")
    ap.add_argument("--cli-projected", action="store_true", help="cli: also the projection-only rows")
    ap.add_argument("--fresh", action="store_true", help="cli-latency smollm2: re-compress existing artifacts")
    ap.add_argument("--cli-kinds", nargs="*", default=list(KINDS), help="cli: kinds of the projection-only rows "
                    "(also neurons, and magnitude: `--method magnitude --set scope=ffn --set sparsity=1-ratio`)")
    ap.add_argument("--cli-ratios", type=float, nargs="*", default=list(RATIOS), help="cli: their ratios")
    args = ap.parse_args()
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    {"cli": run_cli, "cli-latency": run_cli_latency}[args.part](args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
